"""The GAN trainer end to end on phantom shards: train, checkpoint, resume, NaN, devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.synthesis import get_config
from experiments.train import train
from nodule_jax import gan_requests, losses, train_synthesis
from nodule_jax.checkpoint import Checkpointer
from nodule_jax.inpaint import build_models, load_generator
from nodule_jax.masks import sphere_mask
from nodule_jax.sharding import make_mesh, to_global


def _config(data_dir, **overrides):
  config = get_config("smoke")
  config.data.data_dir = str(data_dir)
  config.num_devices = 2
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("gan")
  state = train(_config(built[0], num_steps=2, checkpoint_every=2), workdir)
  return workdir, jax.device_get(state)


def test_trains_writes_checkpoint_events_and_figure(trained):
  workdir, state = trained
  assert int(state.step) == 2 and int(state.d_step) == 2 * get_config("smoke").n_critic
  assert Checkpointer(workdir / "checkpoints").all_steps() == [2]
  assert list(workdir.glob("events.out.tfevents.*"))
  for png in ("figure2_classes.png", "figure3_noise_and_size.png"):
    assert (workdir / png).read_bytes()[:4] == b"\x89PNG"


def test_load_generator_gives_the_weights_average_or_the_last_weights(trained):
  workdir, state = trained
  for averaged, expected in ((True, state.g_average), (False, state.g_params)):
    *_, params, step = load_generator(workdir, step=2, averaged=averaged)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(state.g_average),
                                            jax.tree.leaves(state.g_params)))


def test_resume_continues_from_the_latest_checkpoint(trained, built, capsys):
  workdir, state2 = trained
  config = _config(built[0], num_steps=3, checkpoint_every=2)
  # The checkpoint holds exactly the state the first run ended with.
  models = build_models(config)
  mesh = make_mesh(2)
  restored, _ = train_synthesis.create_state(config, models, *train_synthesis.make_optimizers(config),
                                             mesh, Checkpointer(workdir / "checkpoints"))
  for a, b in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(state2)):
    np.testing.assert_array_equal(a, b)
  state3 = train_synthesis.train_and_evaluate(config, workdir)
  assert "Resuming from the checkpoint at step 2" in capsys.readouterr().out
  assert int(state3.step) == 3
  assert Checkpointer(workdir / "checkpoints").all_steps() == [2, 3]


def test_a_workdir_of_another_config_is_refused_naming_the_parameter(trained, built):
  workdir, _ = trained
  mesh = make_mesh(2)
  for change, message in (
      ({"model.width": 6}, r"g_params/.* has shape .* there and .* here; a model key"),
      ({"on_nonfinite": "skip"}, r"lacks \d+ it needs .*; an optim\.\* key")):
    config = _config(built[0])
    config.update_from_flattened_dict(change)
    models = build_models(config)
    with pytest.raises(ValueError, match=message):
      train_synthesis.create_state(config, models, *train_synthesis.make_optimizers(config),
                                   mesh, Checkpointer(workdir / "checkpoints"))


@pytest.mark.slow
def test_nan_stops_naming_loss_and_step_and_keeps_last_checkpoint(trained, built, tmp_path):
  workdir, _ = trained
  before = Checkpointer(workdir / "checkpoints").latest_step()
  config = _config(built[0], num_steps=before + 3, checkpoint_every=1)
  config.loss.lambda_gp = float("nan")
  with pytest.raises(FloatingPointError, match=rf"non-finite loss at step {before + 1}: .*critic/loss=nan"):
    train_synthesis.train_and_evaluate(config, workdir)
  assert Checkpointer(workdir / "checkpoints").latest_step() == before
  # on_nonfinite="skip": each NaN update is skipped and logged; step 1's two critic updates
  # (n_critic 2) are skipped and saved with unchanged parameters; step 2 makes 4 in a row > 2.
  config.update(on_nonfinite="skip", max_nonfinite_skips=2, num_steps=5)
  with pytest.raises(FloatingPointError, match=r"4 updates in a row skipped .* at step 2 "
                                               r"\(config.max_nonfinite_skips=2\)"):
    train_synthesis.train_and_evaluate(config, tmp_path)
  assert Checkpointer(tmp_path / "checkpoints").latest_step() == 1


def test_skip_policy_leaves_parameters_and_moments_untouched_and_counts(tmp_path, capsys):
  import ml_collections
  import optax

  from nodule_jax.optimizers import make_optimizer
  from nodule_jax.training import NonFiniteGuard
  tx = make_optimizer(get_config("smoke").optim, 10, skip_nonfinite=True)
  params = {"w": jnp.ones(3)}
  opt = tx.init(params)
  guard = NonFiniteGuard(ml_collections.ConfigDict(dict(on_nonfinite="skip",
                                                        max_nonfinite_skips=1)),
                         Checkpointer(tmp_path))
  history = []
  for step, g in enumerate([np.nan, 1.0, np.inf, np.nan], start=1):
    updates, new_opt = tx.update({"w": jnp.full(3, g)}, opt, params)
    new_params = optax.apply_updates(params, updates)
    if np.isfinite(g):
      assert not np.allclose(new_params["w"], params["w"])
    else:  # skipped: the same parameters and Adam moments
      np.testing.assert_array_equal(new_params["w"], params["w"])
      for a, b in zip(jax.tree.leaves(new_opt.inner_state), jax.tree.leaves(opt.inner_state)):
        np.testing.assert_array_equal(a, b)
    params, opt = new_params, new_opt
    if step < 4:
      history.append(guard({"loss": float(g)}, step, opt)["skipped_updates"])
  assert history == [1.0, 1.0, 2.0]
  assert "step 3: non-finite gradients (loss=inf); update skipped (1 in a row, 2 in all)" in (
      capsys.readouterr().out)
  with pytest.raises(FloatingPointError, match="2 updates in a row skipped .* at step 4"):
    guard({"loss": float("nan")}, 4, opt)


def _batch(rng, labels, diameters) -> dict:
  """Random patches with a consensus mask: a sphere of the diameter on the centre."""
  diameters = np.asarray(diameters, np.float32)
  return {"image": rng.uniform(-1, 1, (len(diameters), 32, 64, 64, 1)).astype(np.float32),
          "mask": np.asarray(sphere_mask((32, 64, 64), jnp.asarray(diameters) / 2)),
          "label": np.asarray(labels, np.int32), "diameter_mm": diameters}


def _run_steps(config, num_devices, batches):
  mesh = make_mesh(num_devices)
  models = build_models(config)
  tx_g, tx_d = train_synthesis.make_optimizers(config)
  state, sharding = train_synthesis.create_state(config, models, tx_g, tx_d, mesh)
  d_step, g_step = train_synthesis.compile_steps(config, models, tx_g, tx_d, mesh, sharding)
  history = []
  for i, batch in enumerate(batches):
    step = d_step if i % 2 == 0 else g_step
    state, metrics = step(state, to_global(batch, mesh))
    history.append(jax.device_get(metrics))
  return history, jax.device_get(state), d_step, g_step


def test_same_losses_on_1_and_8_devices_and_no_recompile():
  config = get_config("smoke")
  config.loss.cls_start_step = 0
  rng = np.random.default_rng(0)
  batches = [_batch(rng, rng.integers(0, 2, 8), rng.uniform(4, 20, 8)) for _ in range(4)]
  one = _run_steps(config, 1, batches)[0]
  eight, _, d_step, g_step = _run_steps(config, 8, batches)
  assert jax.device_count() == 8
  for m1, m8 in zip(one, eight):
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], rtol=2e-3, atol=1e-4, err_msg=k)
  assert d_step._cache_size() == 1 and g_step._cache_size() == 1  # no recompiles


@pytest.mark.slow
def test_bfloat16_model_keeps_float32_parameters_and_close_losses():
  """model.dtype=bfloat16 (for accelerators): compute in bf16, parameters and optimiser
  state in f32, losses within bf16 rounding of the f32 run."""
  rng = np.random.default_rng(1)
  batches = [_batch(rng, [0, 1], [6.0, 15.0]) for _ in range(2)]
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = get_config("smoke")
    config.model.dtype = dtype
    runs[dtype], state, _, _ = _run_steps(config, 1, batches)
  for m32, m16 in zip(runs["float32"], runs["bfloat16"]):
    for k in m32:
      assert np.isfinite(m16[k]), k
      if k.endswith("/loss"):
        np.testing.assert_allclose(m16[k], m32[k], rtol=2e-2, err_msg=k)
  assert {leaf.dtype for leaf in jax.tree.leaves(state)} <= {np.dtype("float32"),
                                                            np.dtype("int32")}


@pytest.fixture(scope="module")
def judge_workdir(shards, tmp_path_factory):
  """A tiny classifier trained on real patches only: the judge of the evaluation."""
  from configs.classify import get_config as classify_config
  workdir = tmp_path_factory.mktemp("judge")
  config = classify_config("smoke,strategy=raw")
  config.data.data_dir, config.num_devices = str(shards[0]), 2
  train(config, workdir)
  return workdir


@pytest.mark.slow
def test_evaluate_synthesis_writes_the_report_and_catches_a_label_blind_generator(
    trained, shards, judge_workdir, tmp_path, capsys, monkeypatch):
  import json
  import pathlib

  from experiments.evaluate_synthesis import FIGURE, REPORT, run
  from nodule_jax import evaluate_synthesis, inpaint
  workdir, _ = trained
  report = run(workdir, judge_workdir, str(shards[0]), tmp_path / "eval",
               splits=("validation", "test"), draws=2)
  saved = json.loads((tmp_path / "eval" / REPORT).read_text())
  assert saved["label_swap"]["all"]["pairs"] == 2 * saved["backgrounds"] > 0
  assert saved["invariants"] == {"max_change_outside_hole": 0.0, "inside_window": True}
  assert saved["gan_seed"] == inpaint.saved_config(workdir).seed
  for name in ("benign", "malignant"):
    assert 0 <= saved["faithfulness"][name]["value"] <= 1
    assert 0 <= saved["faithfulness_at_background_size"]["all"][name] <= 1
    assert saved["faithfulness"][name]["judge_on_real"] == saved["judge"]["on_evaluated_real"][name]
    assert 0 <= saved["faithfulness"][name]["judge_on_transplanted"] <= 1
    low, high = saved["faithfulness"][name]["judge_on_transplanted_ci95"]
    assert 0 <= low <= high <= 1
    low, high = saved["faithfulness"][name]["rank_vs_transplanted_ci95"]
    assert 0 <= low <= high <= 1
    assert 0 <= saved["faithfulness"][name]["rank_vs_transplanted"] <= 1
    assert 0 <= saved["training_copy"]["faithfulness"][name]["rank_vs_transplanted"] <= 1
    hu = {part: saved["hu_in_hole"][f"{part}_{name}"]   # the pooled real = its two parts
          for part in ("real", "evaluated_real", "training_real")}
    assert hu["real"]["voxels"] == hu["evaluated_real"]["voxels"] + hu["training_real"]["voxels"]
    np.testing.assert_allclose(hu["real"]["mean"] * hu["real"]["voxels"], sum(
        hu[p]["mean"] * hu[p]["voxels"] for p in ("evaluated_real", "training_real")), rtol=1e-4)
    stripes = saved["stripes"][name]
    assert 0 <= stripes["synthetic"] <= 1 and 0 <= stripes["real"] < 0.2   # real: smooth
    rows = saved["hu_in_hole_by_size"][name]
    for row in rows:                                 # size bins, each with both sides
      assert row["from_mm"] < row["to_mm"] and row["n_synthetic"] > 0 and row["n_real"] > 0
      assert row["real"]["voxels"] > 0 and row["synthetic"]["voxels"] > 0
    assert sum(r["n_synthetic"] for r in rows) <= 2 * saved["backgrounds"]
    for row in saved["reconstruction"]["hu_by_size"][name]:   # each nodule, its own hole
      assert row["n"] > 0 and row["synthetic"]["voxels"] == row["real"]["voxels"] > 0
    assert set(saved["faithfulness"][name]["by_background_class"]) <= {"benign", "malignant"}
    low, median, high = saved["class_sizes_mm"][name]
    assert 3 <= low <= median <= high <= saved["max_diameter_mm"]
    assert saved["realism"][name]["n_synthetic"] == 2 * saved["backgrounds"]
  assert saved["reconstruction"]["mae_hu"] > 0 and set(saved["targets"]) == set(report["targets"])
  assert sum(r["n"] for rows in saved["reconstruction"]["hu_by_size"].values()
             for r in rows) == saved["label_swap"]["all"]["pairs"]   # every factual in-painting
  assert (tmp_path / "eval" / FIGURE).read_bytes()[:4] == b"\x89PNG"
  copy = saved["training_copy"]           # the same targets, training nodules in the holes
  assert set(copy["targets"]) == set(saved["targets"])
  assert copy["label_swap"]["all"]["pairs"] == saved["label_swap"]["all"]["pairs"]
  for name in ("benign", "malignant"):   # the same real references, its own syntheses
    assert copy["hu_in_hole"][f"real_{name}"] == saved["hu_in_hole"][f"real_{name}"]
    assert copy["hu_in_hole"][f"synthetic_{name}"]["voxels"] == (
        saved["hu_in_hole"][f"synthetic_{name}"]["voxels"])
    for mine, its in zip(saved["hu_in_hole_by_size"][name], copy["hu_in_hole_by_size"][name],
                         strict=True):          # the same requests' holes, bin by bin
      assert its["real"] == mine["real"] and its["n_synthetic"] == mine["n_synthetic"]
      assert its["synthetic"]["voxels"] == mine["synthetic"]["voxels"]
  printed = capsys.readouterr().out
  assert "| label swap |" in printed and "Targets:" in printed
  assert "A copy of the training set" in printed and "— a copy of the training set: " in printed
  for name in ("benign", "malignant"):   # the requests ranked against the copy's answers
    rank = saved["faithfulness_vs_training_copy"][name]
    assert 0 <= rank["ci95"][0] <= rank["ci95"][1] <= 1 and 0 <= rank["value"] <= 1
    assert 0 <= saved["judge"]["on_training_real"][name] <= 1
  assert "Ranked instead against the copy's answers" in printed
  assert "> -400 HU synthetic / copy / real" in printed
  average = saved["training_average"]   # the HU targets, the same requests' hole voxels
  assert set(average["targets"]) == {t for t in saved["targets"] if t.startswith("HU ")}
  for name in ("benign", "malignant"):
    assert average["hu_in_hole"][f"synthetic_{name}"]["voxels"] == (
        saved["hu_in_hole"][f"synthetic_{name}"]["voxels"])
  assert "The training set's average nodule" in printed
  real_pairs = saved["label_swap_real"]   # the backgrounds' own nodules, one size, both classes
  assert real_pairs["width_mm"] == 2.0 and real_pairs["pairs"] >= 0
  assert "The label swap's real counterpart" in printed
  empty = saved["judge"]["without_nodule"]   # both classes among the test phantom's backgrounds
  assert 0 <= empty["auc_ci95"][0] <= empty["auc"] <= empty["auc_ci95"][1] <= 1
  assert "filled with flat lung" in printed
  assert "— its average at the requests: " in printed

  # Learning curves: every kept checkpoint, a report each and TensorBoard scalars; here of
  # the last step's weights, so the latest differs from the weights' average above.
  from experiments.evaluate_synthesis import learning_curves
  from nodule_jax.inpaint import checkpoint_steps
  steps = checkpoint_steps(workdir)
  reports = learning_curves(workdir, judge_workdir, str(shards[0]), tmp_path / "curves",
                            splits=("validation", "test"), draws=2, averaged=False)
  assert [r["gan_step"] for r in reports] == steps
  assert reports[-1]["reconstruction"]["mae_hu"] != report["reconstruction"]["mae_hu"]
  for step in steps:
    assert (tmp_path / "curves" / f"synthesis_evaluation_{step}.json").exists()
  assert list((tmp_path / "curves" / "learning_curves").glob("events.out.tfevents.*"))

  # Several runs compared (here one GAN twice, one draw each): a report per run in its own
  # folder, the targets counted across them, the comparison written as JSON.
  from experiments.evaluate_synthesis import RUNS_REPORT, compare_runs
  summary = compare_runs([workdir, workdir], judge_workdir, str(shards[0]), tmp_path / "runs",
                         splits=("validation", "test"), draws=1)
  name = pathlib.Path(workdir).name
  runs = [json.loads((tmp_path / "runs" / f"{i}_{name}" / REPORT).read_text()) for i in (0, 1)]
  assert summary["runs"] == [f"0_{name}", f"1_{name}"]
  assert summary["targets_met"] == [sum(r["targets"].values()) for r in runs]
  assert all(e["runs_meeting"] in (0, 2) for e in summary["targets"].values())   # same GAN
  assert json.loads((tmp_path / "runs" / RUNS_REPORT).read_text()) == summary
  assert "2 GAN runs:" in capsys.readouterr().out

  # A generator that ignores the label: every pair is the same patch, Δp is exactly 0.
  blind = lambda config, models, g, batch, rng, *request: inpaint.inpaint(
      config, models, g, batch, rng)
  monkeypatch.setattr(evaluate_synthesis, "inpaint", blind)
  report = run(workdir, judge_workdir, str(shards[0]), tmp_path / "blind",
               splits=("validation", "test"), draws=2)
  swap = report["label_swap"]["all"]
  assert swap["delta"] == 0 and swap["delta_ci95"] == [0.0, 0.0] and swap["share_higher"] == 0
  assert not report["targets"]["label swap: delta > 0 with the 95% CI above 0"]

  # The blind run against the first, paired by their (one) GAN seed.
  from experiments.compare_synthesis import reports_by_seed
  from nodule_jax.synthesis_report import paired_by_seed
  paired = paired_by_seed(reports_by_seed([tmp_path / "eval"]),
                          reports_by_seed([tmp_path / "blind"]))
  assert paired["seeds"] == [saved["gan_seed"]]
  assert paired["headline"]["label_swap/delta"]["mean_difference"] == pytest.approx(
      -saved["label_swap"]["all"]["delta"])

  # The paper's figures, each panel labelled with the judge's probability.
  from experiments.figures import run as figures
  paths = figures(workdir, str(shards[0]), tmp_path / "figures", judge_workdir, draws=2)
  assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_gradient_accumulation_updates_every_k_batches():
  config = get_config("smoke")
  config.optim.accumulate = 2
  mesh = make_mesh(2)
  models = build_models(config)
  tx_g, tx_d = train_synthesis.make_optimizers(config)
  state, sharding = train_synthesis.create_state(config, models, tx_g, tx_d, mesh)
  d_step, _ = train_synthesis.compile_steps(config, models, tx_g, tx_d, mesh, sharding)
  rng = np.random.default_rng(2)
  before = jax.device_get(state.d_params)
  changed = []
  for _ in range(2):
    state, _ = d_step(state, to_global(_batch(rng, [0, 1] * 4, [8.0] * 8), mesh))
    after = jax.device_get(state.d_params)
    changed.append(any(not np.array_equal(a, b) for a, b in
                       zip(jax.tree.leaves(after), jax.tree.leaves(before))))
  assert changed == [False, True]  # the first batch only accumulates


def test_nodule_hole_tables_cover_each_training_nodule_in_its_own_hole(built):
  """One row per training nodule up to the size limit, its label and diameter; the mean in
  [-1, 1], shares in [0, 1] and above -100 HU no more than above -400 HU; the hole holds
  the nodule, so its share above -400 HU exceeds that of the whole working patch."""
  from configs.synthesis import get_config
  from nodule_jax import input_pipeline
  config = get_config("demo")
  label, diameter = input_pipeline.labels_and_diameters([built[0]])
  table = gan_requests.nodule_hole_table(config, str(built[0]), losses.hole_moments)
  keep = diameter <= config.mask.max_diameter_mm
  assert table.shape == (keep.sum(), 5)
  np.testing.assert_array_equal(np.sort(table[:, 1]), np.sort(diameter[keep]))
  assert sorted(table[:, 0].tolist()) == sorted(label[keep].tolist())
  assert np.all(np.abs(table[:, 2]) <= 1) and np.all((table[:, 3:] >= 0) & (table[:, 3:] <= 1))
  assert np.all(table[:, 4] <= table[:, 3] + 1e-6) and np.mean(table[:, 3]) > 0.05
  # the same nodules' hole quantiles: rising, and the share of levels above -400 HU the
  # share of voxels above it, to the levels' resolution
  from nodule_jax.intensity import hu_to_unit
  quantiles = gan_requests.nodule_hole_table(config, str(built[0]), losses.hole_quantiles)
  assert quantiles.shape == (keep.sum(), 2 + losses.QUANTILE_LEVELS)
  np.testing.assert_array_equal(quantiles[:, :2], table[:, :2])
  assert np.all(np.diff(quantiles[:, 2:], axis=1) >= 0)
  share = np.mean(quantiles[:, 2:] > hu_to_unit(np.float32(-400.0)), 1)
  np.testing.assert_allclose(share, table[:, 3], atol=0.06)


def test_class_diameters_are_quantiles_of_each_class_and_a_missing_class_is_named(built):
  from nodule_jax import input_pipeline
  label, diameter = input_pipeline.labels_and_diameters([built[0]])
  sizes = gan_requests.class_diameters(str(built[0]), 32.0, k=8)
  assert sizes.shape == (2, 8) and np.all(np.diff(sizes, axis=1) >= 0)
  for cls in (0, 1):
    pool = diameter[(label == cls) & (diameter <= 32.0)]
    np.testing.assert_allclose(sizes[cls], np.quantile(pool, (np.arange(8) + 0.5) / 8), rtol=1e-6)
  smallest_malignant = diameter[label == 1].min()
  with pytest.raises(ValueError, match="no malignant training nodule"):
    gan_requests.class_diameters(str(built[0]), float(smallest_malignant) - 0.01)


_BAD_VALUES = [   # (section, key, value, what the error says)
    ("loss", "counterfactual_diameter", "sample",
     "counterfactual_diameter='sample': expected 'class', 'covering' or 'same'"),
    ("loss", "counterfactual_own_size", 1.5, "counterfactual_own_size=1.5: expected the share"),
    ("loss", "size_target_other_class", -0.5, "size_target_other_class=-0.5: expected a finite"),
    ("loss", "size_target_other_class", float("inf"),
     "size_target_other_class=inf: expected a finite"),
    ("loss", "histogram_core_weight", -1.0, "histogram_core_weight=-1.0: expected a finite"),
    *[("loss", "counterfactual", shares, r"loss.counterfactual=.*each in \[0, 1\]")
      for shares in [(0.5, 1.5), (0.5, 0.5, 0.5)]],
    *[("data", "oversample", rule, r"data.oversample=.*expected \(class 0 or 1")
      for rule in [(2, 12.0, 4), (0, 12.0, 2.5), (0, 12.0), (0, 12.0, 0)]],
]


@pytest.mark.parametrize("section,key,value,message", _BAD_VALUES)
def test_a_bad_class_control_value_is_refused_before_training(built, tmp_path, section, key,
                                                               value, message):
  config = _config(built[0])
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    train_synthesis.train_and_evaluate(config, tmp_path / "gan")
  assert not (tmp_path / "gan").exists()

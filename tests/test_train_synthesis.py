"""The GAN trainer end to end on phantom shards: train, checkpoint, resume, NaN, devices."""
import jax
import numpy as np
import pytest

from configs.synthesis import get_config
from experiments.train import train
from nodule_jax import train_synthesis
from nodule_jax.checkpoint import Checkpointer
from nodule_jax.inpaint import build_models
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
  png = workdir / "inpainting.png"
  assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


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


def test_nan_stops_naming_loss_and_step_and_keeps_last_checkpoint(trained, built):
  workdir, _ = trained
  before = Checkpointer(workdir / "checkpoints").latest_step()
  config = _config(built[0], num_steps=before + 3, checkpoint_every=1)
  config.loss.lambda_gp = float("nan")
  with pytest.raises(FloatingPointError, match=rf"non-finite loss at step {before + 1}: .*critic/loss=nan"):
    train_synthesis.train_and_evaluate(config, workdir)
  assert Checkpointer(workdir / "checkpoints").latest_step() == before


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
  batches = [{"image": rng.uniform(-1, 1, (8, 32, 64, 64, 1)).astype(np.float32),
              "label": rng.integers(0, 2, 8).astype(np.int32),
              "diameter_mm": rng.uniform(4, 20, 8).astype(np.float32)} for _ in range(4)]
  one = _run_steps(config, 1, batches)[0]
  eight, _, d_step, g_step = _run_steps(config, 8, batches)
  assert jax.device_count() == 8
  for m1, m8 in zip(one, eight):
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], rtol=2e-3, atol=1e-4, err_msg=k)
  assert d_step._cache_size() == 1 and g_step._cache_size() == 1  # no recompiles


def test_bfloat16_model_keeps_float32_parameters_and_close_losses():
  """model.dtype=bfloat16 (for accelerators): compute in bf16, parameters and optimiser
  state in f32, losses within bf16 rounding of the f32 run."""
  rng = np.random.default_rng(1)
  batches = [{"image": rng.uniform(-1, 1, (2, 32, 64, 64, 1)).astype(np.float32),
              "label": np.array([0, 1], np.int32),
              "diameter_mm": np.array([6.0, 15.0], np.float32)} for _ in range(2)]
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


def test_synthesize_writes_malignant_shards_and_nifti_keeping_the_background(trained, built,
                                                                              tmp_path):
  import SimpleITK as sitk
  import tensorflow_datasets as tfds

  from data_prep.tfds_builder import shard_dir
  from experiments.synthesize import run as synthesize
  workdir, _ = trained
  config = _config(built[0])
  config.data.crop = (16, 32, 32)  # the in-painted crop is pasted back into the full patch
  config.model.local_box = (8, 16, 16)
  config.model.critic_widths = (8, 8, 8)
  real = {r["nodule_id"].decode(): r for r in tfds.as_numpy(
      tfds.builder_from_directory(str(shard_dir(built[0]))).as_dataset(split="train"))}
  n_malignant = sum(int(r["label"]) for r in real.values())
  with pytest.raises(FileNotFoundError, match="no GAN checkpoint"):
    synthesize(tmp_path / "nothing", str(built[0]), tmp_path / "x")
  # A GAN trained on the crop, briefly, to synthesise from.
  gan = tmp_path / "gan_crop"
  config.num_steps, config.checkpoint_every = 1, 1
  train_synthesis.train_and_evaluate(config, gan)
  out = tmp_path / "syn"
  summary = synthesize(gan, str(built[0]), out, per_real=1.5)
  records = list(tfds.as_numpy(tfds.builder_from_directory(str(shard_dir(out))).as_dataset(
      split="train")))
  assert len(records) == summary["synthetic"] == round(1.5 * n_malignant)
  for r in records:
    assert r["label"] == 1 and r["image"].shape == (32, 64, 64) and r["image"].dtype == np.int16
    source = real[r["nodule_id"].decode().split("_from_", 1)[1]]
    hole = r["mask"].astype(bool)
    assert hole.any() and not hole[:8].any() and not hole[:, :16].any()  # inside the crop
    np.testing.assert_array_equal(r["image"][~hole], source["image"][~hole])
  nifti = sorted((out / "nifti").glob("*.nii.gz"))
  image = sitk.ReadImage(str(nifti[0]))
  assert image.GetSize() == (64, 64, 32) and image.GetSpacing() == (1.0, 1.0, 2.0)
  assert (out / "synthetic.png").read_bytes()[:4] == b"\x89PNG"

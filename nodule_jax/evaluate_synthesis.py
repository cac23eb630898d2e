"""Does the generator paint the class it is asked for, realistically and diversely?

Every background (a real patch of the evaluated splits whose nodule the GAN can cover) is
in-painted `draws` times, in two passes: each draw asked for benign and for malignant at
the background's own diameter (same hole and noise: the label swap), and again at each
class's own sizes (diameters drawn from that class's backgrounds). A judge (a classifier
trained on real patches only, `nodule_jax.judge`) scores every patch. Reported:

  label swap       mean Δp = p(malignant request) - p(benign request), CI over backgrounds;
                   share of pairs where the malignant request scores higher; the share
                   judged as asked, per background class
  faithfulness     (class sizes) share the judge assigns to the requested class at its
                   validation Youden threshold, against the same share for real nodules of
                   that class transplanted into the same backgrounds (the judge also reads
                   the context around a nodule), and its recall / specificity on the
                   backgrounds' own real patches; threshold-free, how often a request is
                   judged more of its class than such a transplant (0.5: alike), the target;
                   the same rank against a copy of the training set's answers to the same
                   requests, and the judge on the training patches: whether a miss is the
                   generator's, or lies between the training nodules and the evaluated ones
  realism          (class sizes) per class, KID and Fréchet distance to the real training
                   patches of that class in the judge's penultimate features, against the
                   real-vs-real floor (the backgrounds' real patches against the same
                   training patches); HU statistics inside the hole, synthetic and real (all
                   real nodules the GAN can cover; the evaluated splits' and the training
                   split's, which the GAN learnt from, beside them), also by nodule size
  reconstruction   with the true label: MAE, PSNR, SSIM inside the hole; by nodule size,
                   each real nodule's hole HU beside its own in-painting's (same hole)
  stripes          (class sizes) how much of the hole's texture alternates voxel by voxel,
                   synthetic and real (`synthesis_metrics.stripe_share`)
  diversity        pairwise L1 and SSIM among the draws of one background
  invariants       nothing outside the hole changed; values inside the HU window
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds

from data_prep.labels import CLASS_NAMES
from nodule_jax import input_pipeline, synthesis_metrics
from nodule_jax.baselines import (SIZE_BANDWIDTH_MM, copy_training_nodules,
                                  rank_against_transplants)
from nodule_jax.hole_hu import (factual_hu_by_size, factual_hu_by_texture, hole_hu, hu_by_size,
                                hu_in_holes, request_sized_hole, training_average)
from nodule_jax.inpaint import (centre_box, crop_batch, diameter_pools, inpaint, inpaint_hole,
                                paste, working_shape)
from nodule_jax.judge import Judge, judge_batches
from nodule_jax.nodule_ratings import request_ratings, training_nodules
from nodule_jax.judge_references import (against_transplants, judge_without_nodule,
                                         transplanted_scores)
from nodule_jax.rng import Stream, stream_key
from nodule_jax.synthesis_targets import targets

KEYS = ("image", "mask", "label", "diameter_mm", "ratings")


def load_patches(data_dir: str, splits) -> dict:
  """Real patches of `splits` ([N, 32, 64, 64, 1] image and consensus mask, label [N],
  diameter_mm [N], ratings [N, 2], nodule_id [N])."""
  rows = []
  for split in splits:
    for batch in tfds.as_numpy(input_pipeline.eval_batches(data_dir, split, 64)):
      rows += [{k: batch[k][i] for k in (*KEYS, "nodule_id")} for i in range(len(batch["label"]))]
  if not rows:
    raise ValueError(f"no patches in splits {list(splits)} of {data_dir}")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def inpaint_both_classes(config, models, g_params, backgrounds: dict, draws: int, seed: int,
                         batch_size: int = 8, sizes: Sequence[np.ndarray] | None = None,
                         nodules: np.ndarray | None = None) -> dict:
  """Each background `draws` times, as benign and as malignant with the same noise.

  backgrounds: full patches (`load_patches`). sizes: None (both requests at the
  background's own diameter, so the same hole: the label swap), or per class a pool of
  diameters (mm) that class's requests draw from (seeded; the hole grows to cover both the
  requested size and the background's nodule). nodules: for a GAN conditioned on ratings,
  the training nodules each request draws its ratings from by class and size
  (`nodule_ratings.nodule_table`; both classes' requests draw with the same key); None: the
  background's own ratings. Returns arrays over the N·draws items, in
  background-major order: background [M] (index), and per class name: fake_<name>
  [M, 32, 64, 64] in [-1, 1] (full patches: the GAN's working crop pasted back), hole_<name>
  [M, 32, 64, 64] bool, diameter_<name> [M] mm, ratings_<name> [M, 2] (asked for, or for
  a GAN not conditioned on them, the background's).
  """
  run = jax.jit(functools.partial(inpaint, config, models))
  shape = working_shape(config)
  index = np.repeat(np.arange(len(backgrounds["label"])), draws)
  if sizes is None:
    diameters = [backgrounds["diameter_mm"][index].astype(np.float32)] * len(CLASS_NAMES)
  else:
    draw = np.random.default_rng(seed)
    diameters = [draw.choice(np.asarray(pool, np.float32), len(index)) for pool in sizes]
  out = {"background": index}
  for start in range(0, len(index), batch_size):
    n = len(index[start:start + batch_size])
    rows = np.r_[start:start + n, np.full(batch_size - n, start + n - 1)]  # one shape
    full = {k: backgrounds[k][index[rows]] for k in KEYS}
    key = stream_key(seed, Stream.EVALUATION, start)
    for cls, name in enumerate(CLASS_NAMES):
      label = np.full(batch_size, cls, np.int32)
      ratings = request_ratings(key, nodules, label, diameters[cls][rows], full["ratings"])
      result = jax.device_get(run(g_params, crop_batch(full, shape), key, label,
                                  diameters[cls][rows], None, ratings))
      out.setdefault(f"ratings_{name}", []).append(np.asarray(ratings)[:n])
      image, hole = paste(full["image"][..., 0], result["fake"][..., 0], result["mask"][..., 0] > 0)
      out.setdefault(f"fake_{name}", []).append(image[:n])
      out.setdefault(f"hole_{name}", []).append(hole[:n])
  for cls, name in enumerate(CLASS_NAMES):
    out[f"diameter_{name}"] = diameters[cls]
  return {k: np.concatenate(v) if isinstance(v, list) else v for k, v in out.items()}


def own_holes(config, patches: dict, seed: int, batch_size: int = 16) -> np.ndarray:
  """[N, D, H, W] bool: each real patch's hole at its own nodule's size, made as `inpaint`
  makes it (on the GAN's working crop, put back into the full patch; margin, jitter and
  shift drawn from `seed`). patches: `load_patches`' arrays."""
  run = jax.jit(functools.partial(inpaint_hole, config))
  shape, n, out = working_shape(config), len(patches["label"]), []
  for start in range(0, n, batch_size):
    rows = np.minimum(np.arange(start, start + batch_size), n - 1)   # one shape: repeat the last
    batch = crop_batch({"image": patches["image"][rows],
                        "mask": patches["mask"][rows].astype(np.float32),
                        "diameter_mm": patches["diameter_mm"][rows]}, shape)
    hole = np.asarray(run(batch, stream_key(seed, Stream.EVALUATION, start)).mask[..., 0]) > 0
    full = np.zeros((batch_size, *patches["image"].shape[1:4]), bool)
    full[(slice(None), *centre_box(full.shape[1:4], shape))] = hole
    out.append(full[:min(batch_size, n - start)])
  return np.concatenate(out)


# ----------------------------------------------------------------- the report
def class_sizes(backgrounds: dict) -> list[np.ndarray]:
  """Per class, the diameters (mm) of the backgrounds' real nodules of that class: what a
  request "at that class's sizes" draws from (the transplanted donors, the judge's recall
  and the KID floor are those same real patches)."""
  return diameter_pools(backgrounds["label"], backgrounds["diameter_mm"],
                        "nodule among the evaluated backgrounds to draw its sizes from: "
                        "evaluate more splits (--split validation,test)")


def _faithfulness(p: dict, threshold: float, keep: np.ndarray) -> dict:
  return {name: synthesis_metrics.faithfulness(p[cls][keep], cls, threshold)
          for cls, name in enumerate(CLASS_NAMES)}


def evaluate(config, models, g_params, judge: Judge, data_dir: str, splits=("validation",),
             draws: int = 4, seed: int = 0, n_boot: int = 2000) -> tuple[dict, dict]:
  """The whole evaluation. Returns (report, arrays for the figure).

  Backgrounds are the evaluated splits' nodules the GAN can cover (up to its
  mask.max_diameter_mm); the judge's ceilings (its verdict on their real patches, and on
  their real nodules transplanted into the other backgrounds, `transplant_pairs`) and the
  real-vs-real floor come from their real patches; the real HU range from every real
  nodule the GAN can cover, training ones included (`own_holes`). Two passes over them
  (a third for a GAN conditioned on ratings: its reconstruction, with each background's
  own ratings, where the two passes draw them per request),
  with the same noise keys: the label swap (both requests at the background's own
  diameter, same hole), and requests at each class's own sizes (`class_sizes`), which
  faithfulness and realism judge: the judge learnt
  what each class looks like at the sizes it has, so a "malignant" 6 mm nodule is not a
  fair test of the label. The synthetic HU statistics take the class-size requests whose
  hole the request sized (requested diameter ≥ the background's), as the real patches'
  holes are sized by their own nodules."""
  evaluated = load_patches(data_dir, splits)
  max_d = config.mask.max_diameter_mm
  coverable = evaluated["diameter_mm"] <= max_d
  if not coverable.any():
    raise ValueError(f"no nodule in splits {list(splits)} of {data_dir} is up to "
                     f"{max_d:g} mm (the GAN's mask.max_diameter_mm)")
  backgrounds = {k: v[coverable] for k, v in evaluated.items()}
  reference = load_patches(data_dir, ("train",))
  pools = class_sizes(backgrounds)
  nodules = training_nodules(config, data_dir)
  both = functools.partial(inpaint_both_classes, config, models, g_params, backgrounds, draws,
                           seed, nodules=nodules)
  swapped, sized = both(), both(sizes=pools)
  own = swapped if nodules is None else both(nodules=None)   # their own ratings
  bg, hole = swapped["background"], swapped["hole_benign"]   # one hole for both requests
  true_label = backgrounds["label"][bg]
  covered = {k: v[reference["diameter_mm"] <= max_d] for k, v in reference.items()}
  real_all = _real_nodules(config, backgrounds, covered, seed)
  evaluated_real = np.arange(len(real_all["label"])) < len(backgrounds["label"])
  own_hole = real_all["hole"][evaluated_real]

  p_real, f_real = judge_batches(judge, backgrounds["image"])
  p_train, f_reference = judge_batches(judge, reference["image"])
  f_reference = {cls: f_reference[reference["label"] == cls] for cls in range(len(CLASS_NAMES))}
  p, p_sized, f_sized = {}, {}, {}
  for cls, name in enumerate(CLASS_NAMES):
    p[cls], _ = judge_batches(judge, swapped[f"fake_{name}"][..., None])
    p_sized[cls], f_sized[cls] = judge_batches(judge, sized[f"fake_{name}"][..., None])

  report = {"judge": _judge_on_real(judge, p_real, backgrounds["label"], p_train,
                                    reference["label"]),
            "splits": list(splits), "backgrounds": int(len(backgrounds["label"])),
            "draws": draws, "left_out_larger": int((~coverable).sum()),
            "max_diameter_mm": float(max_d),
            "class_sizes_mm": {name: np.percentile(pool, (10, 50, 90)).round(1).tolist()
                               for name, pool in zip(CLASS_NAMES, pools)}}
  report["label_swap"], same_size = _label_swap(p, bg, true_label, judge.threshold, n_boot, seed)
  report["judge"]["without_nodule"] = judge_without_nodule(judge, backgrounds, own_hole,
                                                           p_real, n_boot, seed)
  real_pairs = synthesis_metrics.size_matched_pairs(
      p_real, backgrounds["label"], backgrounds["diameter_mm"], SIZE_BANDWIDTH_MM, n_boot, seed)
  report["label_swap_real"] = {"width_mm": SIZE_BANDWIDTH_MM, **real_pairs}
  transplanted = transplanted_scores(judge, backgrounds, own_hole, seed)
  report["faithfulness"] = {
      name: {**against_transplants(p_sized[cls], sized["background"], transplanted[cls], cls,
                                   judge.threshold, backgrounds["label"], seed),
             "judge_on_real": report["judge"]["on_evaluated_real"][name]}
      for cls, name in enumerate(CLASS_NAMES)}
  report["faithfulness_at_background_size"] = same_size
  report["realism"] = _realism(f_sized, f_reference, f_real, backgrounds["label"], seed)
  hu, stripes, real_hu, sized_hu = _hole_statistics(sized, backgrounds, real_all, evaluated_real)
  report["hu_in_hole"] = hu
  report["training_average"] = training_average(sized, backgrounds, real_all,
                                                ~evaluated_real, hu)
  report["stripes"] = stripes
  report["hu_in_hole_by_size"] = hu_by_size(sized, backgrounds, real_all, max_d)
  report.update(_fidelity(swapped, sized, own, backgrounds, max_d))
  report["targets"] = targets(report)
  report["training_copy"], copy_answers = _score_training_copies(
      report, judge, swapped, sized, backgrounds, covered, f_reference, transplanted, n_boot,
      seed,
      functools.partial(hu_by_size, backgrounds=backgrounds, real_all=real_all, max_d=max_d))
  report["faithfulness_vs_training_copy"] = {
      name: rank_against_transplants(p_sized[cls], sized["background"], copy_answers[cls]["p"],
                                     sized["background"], copy_answers[cls]["donor"], cls,
                                     n_boot, seed)
      for cls, name in enumerate(CLASS_NAMES)}
  arrays = dict(p_benign=p[0], p_malignant=p[1], true_label=true_label, hole=hole,
                real=backgrounds["image"][bg, ..., 0],
                fake_benign=swapped["fake_benign"], fake_malignant=swapped["fake_malignant"])
  for cls, name in enumerate(CLASS_NAMES):
    arrays[f"sized_p_{name}"] = p_sized[cls]
    arrays[f"transplanted_p_{name}"] = transplanted[cls]["p"]
    arrays[f"transplanted_host_{name}"] = transplanted[cls]["host"]
    arrays[f"sized_hu_{name}"] = sized_hu[name]
    arrays[f"real_hu_{name}"] = real_hu[name]
  return report, arrays


def _real_nodules(config, backgrounds: dict, train: dict, seed: int) -> dict:
  """Every real nodule the GAN can cover, the backgrounds' first, then the training ones
  (train: `load_patches`' arrays, up to mask.max_diameter_mm): image [R, D, H, W], label,
  diameter_mm [R], mask and each one's hole at its own size (`own_holes`) [R, D, H, W]."""
  out = {k: np.concatenate([backgrounds[k], train[k]])
         for k in ("image", "mask", "label", "diameter_mm")}
  out["hole"] = own_holes(config, out, seed)
  out["image"] = out["image"][..., 0]
  return out


def _judge_on_real(judge: Judge, p_real: np.ndarray, real_label: np.ndarray,
                   p_train: np.ndarray, train_label: np.ndarray) -> dict:
  """The judge, and per class the share of real patches it assigns to their class at its
  threshold (specificity, recall): the evaluated backgrounds' (p_real, real_label [N]) and
  the training split's (p_train, train_label [T])."""
  share = lambda p, y: {name: synthesis_metrics.faithfulness(p[y == cls], cls, judge.threshold)
                        for cls, name in enumerate(CLASS_NAMES)}
  return {"arch": judge.arch, "threshold": judge.threshold, "validation": judge.validation,
          "on_evaluated_real": share(p_real, real_label),
          "on_training_real": share(p_train, train_label)}


def _label_swap(p: dict, bg: np.ndarray, true_label: np.ndarray, threshold: float, n_boot: int,
                seed: int) -> tuple[dict, dict]:
  """The label-swap pass judged (p: per class index the requests' malignant probabilities
  [M]; bg, true_label: [M] their background and its class): Δp and how often the malignant
  request is higher (`synthesis_metrics.label_swap`), and the share judged as asked, each
  over all backgrounds ("all") and per background class ("<name>_backgrounds")."""
  swap = {"all": synthesis_metrics.label_swap(p[0], p[1], bg, n_boot, seed)}
  judged_as_asked = {"all": _faithfulness(p, threshold, np.ones_like(bg, bool))}
  for cls, name in enumerate(CLASS_NAMES):
    keep = true_label == cls
    if keep.any():
      swap[f"{name}_backgrounds"] = synthesis_metrics.label_swap(p[0][keep], p[1][keep],
                                                                 bg[keep], n_boot, seed)
      judged_as_asked[f"{name}_backgrounds"] = _faithfulness(p, threshold, keep)
  return swap, judged_as_asked


def _realism(f_sized: dict, f_reference: dict, f_real: np.ndarray, real_label: np.ndarray,
             seed: int) -> dict:
  """Per class name, KID and Fréchet distance between the class-size requests' judge
  features (f_sized[cls] [M, F]) and the training patches' (f_reference[cls] [T, F]), each
  with its floor: the backgrounds' own real patches of that class (f_real [N, F] where
  real_label == cls) against the same training patches (None under 4 of them)."""
  realism = {}
  for cls, name in enumerate(CLASS_NAMES):
    ref, real_cls = f_reference[cls], f_real[real_label == cls]
    entry = {}
    for metric, fn in (("kid", synthesis_metrics.kid), ("frechet", synthesis_metrics.frechet)):
      entry[metric] = synthesis_metrics.distance_with_ci(fn, f_sized[cls], ref, seed=seed)
      entry[f"{metric}_floor"] = (synthesis_metrics.distance_with_ci(fn, real_cls, ref, seed=seed)
                                  if len(real_cls) >= 4 else None)
    entry["n_synthetic"], entry["n_real_floor"], entry["n_reference"] = (
        len(f_sized[cls]), len(real_cls), len(ref))
    realism[name] = entry
  return realism


def _hole_statistics(sized: dict, backgrounds: dict, real_all: dict, evaluated_real: np.ndarray
                     ) -> tuple[dict, dict, dict, dict]:
  """HU inside the holes and their stripes, synthetic (the class-size requests whose hole the
  request sized, `request_sized_hole`) against real (`_real_nodules`, evaluated_real [R]
  marking the backgrounds'). Returns (hu_in_hole: real_<name>, evaluated_real_<name>,
  training_real_<name>, synthetic_<name> `hu_stats`; stripes per name; and per name the
  real and the synthetic hole voxels in HU, for the figure)."""
  hu, stripes, real_hu, sized_hu = {}, {}, {}, {}
  for cls, name in enumerate(CLASS_NAMES):
    of_class = real_all["label"] == cls
    real_hu[name] = hole_hu(real_all["image"], real_all["hole"], of_class)
    hu[f"real_{name}"] = synthesis_metrics.hu_stats(real_hu[name])
    for part, rows in (("evaluated", of_class & evaluated_real),
                       ("training", of_class & ~evaluated_real)):
      if rows.any():
        hu[f"{part}_real_{name}"] = hu_in_holes(real_all["image"], real_all["hole"], rows)
    kept = request_sized_hole(sized, name, backgrounds)
    sized_hu[name] = hole_hu(sized[f"fake_{name}"], sized[f"hole_{name}"], kept)
    hu[f"synthetic_{name}"] = synthesis_metrics.hu_stats(sized_hu[name])
    stripes[name] = {"synthetic": synthesis_metrics.stripe_share(sized[f"fake_{name}"][kept],
                                                                 sized[f"hole_{name}"][kept]),
                     "real": synthesis_metrics.stripe_share(real_all["image"][of_class],
                                                            real_all["hole"][of_class])}
  return hu, stripes, real_hu, sized_hu


def _fidelity(swapped: dict, sized: dict, own: dict, backgrounds: dict, max_d: float) -> dict:
  """What the in-painting keeps: reconstruction with the true label (`own`: a label-swap
  pass with each background's own ratings, the request of its own class; also by size),
  diversity among the draws of one background (None with one draw), and the invariants of
  both passes (nothing outside the hole changed, every value inside the HU window)."""
  bg, hole = swapped["background"], swapped["hole_benign"]
  true_label, real = backgrounds["label"][bg], backgrounds["image"][bg, ..., 0]
  factual = np.where(true_label[:, None, None, None] == 1, own["fake_malignant"],
                     own["fake_benign"])
  reconstruction = synthesis_metrics.reconstruction(real, factual, hole)
  reconstruction["hu_by_size"] = factual_hu_by_size(
      factual, real, hole, true_label, backgrounds["diameter_mm"][bg], max_d)
  reconstruction["hu_by_texture"] = factual_hu_by_texture(
      factual, real, hole, true_label, backgrounds["ratings"][bg, 0])
  several_draws = len(bg) > len(np.unique(bg))
  diversity = {name: _mean_dicts([
      synthesis_metrics.diversity(swapped[f"fake_{name}"][bg == i], hole[bg == i])
      for i in np.unique(bg)])
      for name in CLASS_NAMES} if several_draws else None
  made = [(m[f"fake_{n}"], m[f"hole_{n}"]) for m in (swapped, sized) for n in CLASS_NAMES]
  invariants = {
      "max_change_outside_hole": float(max(np.max(np.abs(fake[~h] - real[~h]))
                                           for fake, h in made)),
      "inside_window": bool(all(np.all(np.abs(fake) <= 1.0) for fake, _ in made))}
  return {"reconstruction": reconstruction, "diversity": diversity, "invariants": invariants}


def _score_training_copies(report: dict, judge: Judge, swapped: dict, sized: dict,
                           backgrounds: dict, train: dict, f_reference: dict,
                           transplanted: list[dict], n_boot: int, seed: int,
                           by_size: Callable[[dict], dict]) -> dict:
  """The targets a generator that copied the training set would meet (`baselines.
  copy_training_nodules`: every request of both passes answered with a training nodule of
  its class and nearest size, in the same hole), scored against the same real references as
  the GAN (`report`'s). train: the training patches the GAN can cover (image
  [T, D, H, W, 1], label, diameter_mm [T]); f_reference: per class the judge's features of
  the training patches of that class; transplanted: `transplanted_scores`'s; by_size:
  `hu_by_size` of a class-size pass.
  Returns (label_swap, faithfulness, realism (KID), hu_in_hole (synthetic_<name>),
  hu_in_hole_by_size and targets, in the report's layout; per class index, the copy's
  answers to the class-size requests: the judge's malignant probability p and the training
  nodule copied, donor, each [M])."""
  image = backgrounds["image"][..., 0]
  donors = {"image": train["image"][..., 0], "label": train["label"],
            "diameter_mm": train["diameter_mm"]}
  copied = {pass_name: copy_training_nodules(made, image, donors, seed)
            for pass_name, made in (("swap", swapped), ("sized", sized))}
  p, parts = {}, {"faithfulness": {}, "realism": {}, "hu_in_hole": dict(report["hu_in_hole"])}
  answers = {}
  for cls, name in enumerate(CLASS_NAMES):
    p[cls], _ = judge_batches(judge, copied["swap"][f"fake_{name}"][..., None])
    p_sized, f_sized = judge_batches(judge, copied["sized"][f"fake_{name}"][..., None])
    answers[cls] = {"p": p_sized, "donor": copied["sized"][f"donor_{name}"]}
    parts["faithfulness"][name] = against_transplants(
        p_sized, sized["background"], transplanted[cls], cls, judge.threshold,
        backgrounds["label"], seed)
    parts["realism"][name] = {
        "kid": synthesis_metrics.distance_with_ci(synthesis_metrics.kid, f_sized,
                                                  f_reference[cls], seed=seed),
        "kid_floor": report["realism"][name]["kid_floor"]}
    kept = request_sized_hole(sized, name, backgrounds)
    parts["hu_in_hole"][f"synthetic_{name}"] = hu_in_holes(
        copied["sized"][f"fake_{name}"], sized[f"hole_{name}"], kept)
  parts["hu_in_hole_by_size"] = by_size(copied["sized"])
  parts["label_swap"] = {"all": synthesis_metrics.label_swap(p[0], p[1], swapped["background"],
                                                             n_boot, seed)}
  parts["targets"] = targets({**report, **parts})
  return parts, answers


def _mean_dicts(dicts: list[dict]) -> dict:
  return {k: float(np.mean([d[k] for d in dicts])) for k in dicts[0]}



"""The TFDS builder that writes labelled nodule patches as TFRecord shards.

Read back with `tfds.builder_from_directory(shard_dir(data_dir))`.
"""
from __future__ import annotations

import collections
import pathlib
import shutil
from typing import Callable, Iterable, Sequence

from absl import logging

import numpy as np
import tensorflow_datasets as tfds

from data_prep.extract import patch_file
from data_prep.labels import CLASS_NAMES
from data_prep.patches import PATCH_SHAPE
from data_prep.selection import LabelledNodule
from nodule_jax import atomic

NAME, VERSION = "lidc_patches", "1.1.0"   # 1.1: texture and calcification ratings


def shard_dir(data_dir) -> pathlib.Path:
  return pathlib.Path(data_dir) / NAME / VERSION


def features(synthetic: bool = False) -> tfds.features.FeaturesDict:
  """The real set's features; with `synthetic`, those of a synthetic set: `mask` is then the
  in-painted hole (the real set's is the 50% consensus), and five more say how it was made."""
  vol = dict(shape=PATCH_SHAPE, encoding="zlib")
  extra = {
      "synthetic": tfds.features.Scalar(dtype=np.bool_),
      "source_id": tfds.features.Text(),                 # the real background's nodule_id
      "requested_label": tfds.features.ClassLabel(names=CLASS_NAMES),
      "requested_diameter_mm": tfds.features.Scalar(dtype=np.float32),
      "noise_seed": tfds.features.Scalar(dtype=np.int64),  # see nodule_jax.synthesize
  } if synthetic else {}
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(dtype=np.int16, **vol),      # HU, [32, 64, 64]
      "mask": tfds.features.Tensor(dtype=np.uint8, **vol),       # consensus (real) / hole
      "label": tfds.features.ClassLabel(names=CLASS_NAMES),
      "malignancy": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "texture": tfds.features.Tensor(shape=(None,), dtype=np.int32),        # 1 GGO .. 5 solid
      "calcification": tfds.features.Tensor(shape=(None,), dtype=np.int32),  # 1..5, 6 absent
      "n_annotators": tfds.features.Scalar(dtype=np.int32),
      "diameter_mm": tfds.features.Scalar(dtype=np.float32),
      "centre_mm": tfds.features.Tensor(shape=(3,), dtype=np.float32),  # x, y, z
      "patient_id": tfds.features.Text(),
      "nodule_id": tfds.features.Text(),
      **extra,
  })


REAL_KEYS = tuple(features().keys())  # what every shard set holds


class LidcPatches(tfds.core.GeneratorBasedBuilder):
  """LIDC-IDRI nodule patches, 64×64×32 at 1×1×2 mm, benign / malignant, split by patient.

  `examples`: split name -> a callable returning (key, example) pairs of
  `features(synthetic)`: an iterable, or a Beam PTransform that yields them.
  """

  VERSION = tfds.core.Version(VERSION)
  name = NAME

  def __init__(self, *, examples: dict[str, Callable[[], Iterable]] | None = None,
               description: str = "", synthetic: bool = False, **kwargs):
    self._examples = examples or {}
    self._description = description
    self._synthetic = synthetic
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self._description,
                                 features=features(self._synthetic),
                                 supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(make) for split, make in self._examples.items()}

  def _generate_examples(self, make):
    return make()  # a generator, or a PTransform (TFDS then writes through Beam)


def write_shards(data_dir, examples: dict[str, Callable[[], Iterable]], description: str = "",
                 synthetic: bool = False, beam_options=None) -> pathlib.Path:
  """(Re)writes the shard set under `data_dir` (features(synthetic)); returns its folder.

  beam_options: Beam's PipelineOptions when `examples` return PTransforms.

  The set is built in a temporary folder beside it and swapped in whole, so a build that
  is killed or fails leaves the previous set (or none), never a partial one.
  """
  out = shard_dir(data_dir)
  build_dir = pathlib.Path(data_dir) / f".{NAME}{atomic.PARTIAL}"
  shutil.rmtree(build_dir, ignore_errors=True)  # left by a killed build
  tfds.disable_progress_bar()
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # tfds logs every shard at INFO
  try:
    LidcPatches(examples=examples, description=description, synthetic=synthetic,
                data_dir=str(build_dir)
                ).download_and_prepare(
                    download_dir=str(build_dir / ".downloads"),
                    download_config=tfds.download.DownloadConfig(beam_options=beam_options))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.replace_directory(shard_dir(build_dir), out)
  finally:
    logging.set_verbosity(verbosity)
    shutil.rmtree(build_dir, ignore_errors=True)
  return out


def labelled_examples(entries: Sequence[LabelledNodule], patch_dir: str):
  """(key, example) pairs of labelled nodules, patches read from the per-scan npz cache."""
  for series_uid, group in sorted(by_series(entries).items()):
    yield from scan_examples(series_uid, group, patch_dir)


def by_series(entries: Sequence[LabelledNodule]) -> dict[str, list[LabelledNodule]]:
  groups = collections.defaultdict(list)
  for e in entries:
    groups[e.nodule.series_uid].append(e)
  return dict(groups)


def scan_examples(series_uid: str, group: Sequence[LabelledNodule], patch_dir: str):
  """(key, example) pairs of one scan's labelled nodules, read from its npz."""
  with np.load(patch_file(patch_dir, series_uid)) as z:
    index = {str(nid): i for i, nid in enumerate(z["nodule_id"])}
    image, mask, centre = z["image"], z["mask"], z["centre_mm"]
  for e in group:
    n, i = e.nodule, index[e.nodule.nodule_id]
    yield n.nodule_id, {
        "image": image[i], "mask": mask[i], "label": e.label,
        "malignancy": np.asarray(n.scores, np.int32), "n_annotators": n.n_annotators,
        "texture": np.asarray(n.texture, np.int32),
        "calcification": np.asarray(n.calcification, np.int32),
        "diameter_mm": n.diameter_mm, "centre_mm": centre[i],
        "patient_id": n.patient_id, "nodule_id": n.nodule_id}

"""All orbax code: save, keep the newest N, restore the latest."""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """A thin wrapper on `ocp.CheckpointManager` with StandardSave / StandardRestore."""

  def __init__(self, directory, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=False, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> bool:
    """Saves `state` as `step` (the caller decides when). A `step` already there was saved
    by a run that was killed before it recorded the save (the classifier's best.json): the
    rerun, deterministic, saves it again."""
    if step in self._manager.all_steps():
      self._manager.delete(step)
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
      self._manager.wait_until_finished()
    except Exception as e:  # e.g. a full disk: orbax leaves only a temporary folder
      raise OSError(f"writing the checkpoint of step {step} to {self.directory} failed "
                    f"({type(e).__name__}: {e}); the last complete checkpoint (step "
                    f"{self.latest_step()}) is kept and a restart resumes from it") from e
    return saved

  def restore(self, abstract_state: Any | None, step: int | None = None) -> Any:
    """Restores into the structure, dtypes and shardings of `abstract_state`
    (a pytree of `jax.ShapeDtypeStruct`, e.g. from `jax.eval_shape` + shardings), or as
    saved (nested dicts of arrays) when it is None."""
    step = self.latest_step() if step is None else step
    if abstract_state is not None:
      self._check_matches(abstract_state, step)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def _check_matches(self, abstract_state: Any, step: int) -> None:
    """ValueError naming the first entry whose shape differs, or the entries one side lacks,
    between the checkpoint and the state the config builds (a workdir reused by another
    config), instead of orbax's error from deep inside the restore."""
    item = self.directory / str(step) / "default"
    if not item.exists():
      return
    saved_tree = ocp.StandardCheckpointHandler().metadata(epath.Path(item))
    saved = _shapes(getattr(saved_tree, "tree", saved_tree))
    wanted = _shapes(abstract_state)
    where = f"the checkpoint at step {step} in {self.directory}"
    fix = (" — a workdir written with another config (compare its config.json), or use a "
           "fresh --workdir")
    for path, shape in wanted.items():
      if path in saved and saved[path] != shape:
        raise ValueError(f"{where} does not fit this config: {path} has shape {saved[path]} "
                         f"there and {shape} here; {_likely_key(path)} probably differs{fix}")
    extra, missing = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
    if extra or missing:
      candidates = missing or extra   # a model key, rather than the average that mirrors it
      first = next((p for p in candidates if not p.startswith("g_average/")), candidates[0])
      raise ValueError(f"{where} does not fit this config: it has {len(extra)} entries this "
                       f"config does not build and lacks {len(missing)} it needs (first: "
                       f"{first}); {_likely_key(first)} probably differs{fix}")

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{"g_params/G1/Conv_0/kernel": shape, ...}: dict keys, attributes and indices alike."""
  def name(entry) -> str:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return {"/".join(name(e) for e in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, "shape")}


def _likely_key(path: str) -> str:
  if path.split("/")[0] == "g_average":
    return "the code's version (checkpoints from before the generator's moving average lack it)"
  if "opt" in path.split("/")[0]:
    return "an optim.* key (name, accumulate, grad_clip) or on_nonfinite"
  if "param" in path or "batch_stats" in path:
    return "a model key (model.width / depth / dilations / critic_widths / attention, or arch)"
  return "a config key"


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)

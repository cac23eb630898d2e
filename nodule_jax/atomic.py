"""Outputs that a later stage reads appear whole or not at all.

Each is written under a temporary name next to its final one and renamed into place (a
rename within one file system is atomic), so an interrupted writer leaves a `*.partial`
name that nothing reads, never a file or folder that looks complete.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from typing import Iterator

PARTIAL = ".partial"


def write_text(path, text: str) -> pathlib.Path:
  """Writes `text` to `path` through `path.partial` and a rename."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + PARTIAL)
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


@contextlib.contextmanager
def directory(path, marker: str) -> Iterator[pathlib.Path]:
  """Yields an empty `path.partial` folder to fill (the caller writes `marker` into it); on
  success it replaces `path` (an older output, removed after the swap); on an exception it
  is removed and `path` is kept. A non-empty `path` without `marker` is not ours to
  replace: FileExistsError, before anything is written."""
  path = pathlib.Path(path)
  if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
    raise FileExistsError(f"{path} exists and is not an output of this command (no {marker} "
                          "in it): choose another output folder")
  tmp = path.with_name(path.name + PARTIAL)
  shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
  tmp.mkdir(parents=True)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  replace_directory(tmp, path)


def replace_directory(new, path) -> None:
  """Moves the complete folder `new` to `path`, replacing an older `path` (moved to
  `path.old` first and removed after the swap)."""
  path = pathlib.Path(path)
  old = path.with_name(path.name + ".old")
  shutil.rmtree(old, ignore_errors=True)
  if path.exists():
    os.replace(path, old)
  os.replace(new, path)
  shutil.rmtree(old, ignore_errors=True)

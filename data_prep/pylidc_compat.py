"""The one place that makes pylidc 0.2.3 importable with numpy 2.

pylidc uses the aliases ``np.int`` and ``np.float`` (removed in numpy 1.24) and
``pkg_resources`` (kept importable by the ``setuptools<81`` pin in pyproject.toml).
Everything in this project imports pylidc as ``from data_prep.pylidc_compat import pl``;
nothing else patches numpy.
"""
import warnings

import numpy as np

if not hasattr(np, "int"):
  np.int = int  # type: ignore[attr-defined]
if not hasattr(np, "float"):
  np.float = float  # type: ignore[attr-defined]

with warnings.catch_warnings():
  warnings.simplefilter("ignore")  # pkg_resources' own deprecation warning
  import pylidc as pl  # noqa: E402
  from pylidc.utils import consensus  # noqa: E402

__all__ = ["pl", "consensus"]

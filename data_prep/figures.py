"""PNG figures of nodule patches (matplotlib's object API: no backend, nothing at import)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from data_prep.labels import CLASS_NAMES


def patch_gallery(records: Sequence[dict], path: str, per_class: int = 6,
                  contour: str = "50% consensus") -> None:
  """Axial and coronal centre slices of up to `per_class` patches of each class.

  records: dicts with image int16 [32, 64, 64] (HU), mask, label, diameter_mm, nodule_id;
  `contour` names what the red mask outline is.
  """
  present = [(label, name) for label, name in enumerate(CLASS_NAMES)
             if any(int(r["label"]) == label for r in records)]
  fig = Figure(figsize=(2 * per_class, 4.2 * len(present)))
  axes = fig.subplots(2 * len(present), per_class, squeeze=False)
  for row, (label, name) in enumerate(present):
    chosen = [r for r in records if int(r["label"]) == label][:per_class]
    for j in range(per_class):
      ax_ax, ax_co = axes[2 * row, j], axes[2 * row + 1, j]
      ax_ax.axis("off")
      ax_co.axis("off")
      if j >= len(chosen):
        continue
      r = chosen[j]
      hu, mask = np.asarray(r["image"]), np.asarray(r["mask"])
      view = dict(cmap="gray", vmin=-1000, vmax=400)
      ax_ax.imshow(hu[hu.shape[0] // 2], **view)
      ax_ax.contour(mask[hu.shape[0] // 2], [0.5], colors="r", linewidths=0.6)
      ax_co.imshow(hu[:, hu.shape[1] // 2], aspect=2.0, **view)
      ax_co.contour(mask[:, hu.shape[1] // 2], [0.5], colors="r", linewidths=0.6)
      ax_ax.set_title(f"{name} {float(r['diameter_mm']):.0f} mm", fontsize=9)
  fig.suptitle("Nodule patches (axial and coronal centre slices, -1000..400 HU; "
               f"red: {contour})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)

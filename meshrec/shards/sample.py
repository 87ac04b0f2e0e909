"""The one record every source adapter produces: `Sample`, stored column-wise as `SampleTable`.

Coordinates are full-frame pixels in OpenCV's convention (pixel (i, j) has its centre at
x=i, y=j). The person box is SPIN's: centre `center`, side 200·`scale` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from meshrec.body import params as layout
from meshrec.errors import MeshrecError


@dataclass(frozen=True)
class Sample:
    key: str                      # "S1-Directions_1-54138969-000123"
    subject: str
    action: str
    camera: str
    frame: int
    image: str                    # path relative to the image root, as the source names it
    center: tuple[float, float]   # person box centre (x, y), full-frame px
    scale: float                  # person box side / 200
    params: np.ndarray            # float64, meshrec's parameter layout (82 or 85)
    joints: Optional[np.ndarray]  # (24, 4) camera-frame joints + confidence, when the source has them
    cam_K: Optional[np.ndarray]   # (3, 3) full-frame intrinsics, when the source has them
    source: str                   # source file's name
    row: int                      # row in that file
    problem: str = ""             # set by the adapter for a row it knows is unusable


@dataclass
class SampleTable:
    """Samples as columns (a few hundred thousand rows stay a few arrays, cheap to slice and ship)."""

    key: np.ndarray       # (N,) str
    subject: np.ndarray   # (N,) str
    action: np.ndarray    # (N,) str
    camera: np.ndarray    # (N,) str
    frame: np.ndarray     # (N,) int64
    image: np.ndarray     # (N,) str
    center: np.ndarray    # (N, 2) float64
    scale: np.ndarray     # (N,) float64
    params: np.ndarray    # (N, P) float64
    joints: Optional[np.ndarray]  # (N, 24, 4) float64
    cam_K: Optional[np.ndarray]   # (N, 3, 3) float64
    source: np.ndarray    # (N,) str
    row: np.ndarray       # (N,) int64
    problem: np.ndarray   # (N,) str: why the adapter already knows a row is unusable ("" if not)

    def __len__(self) -> int:
        return int(self.key.shape[0])

    @property
    def with_transl(self) -> bool:
        return bool(layout.has_transl(self.params))

    def take(self, index: np.ndarray | slice) -> "SampleTable":
        def pick(col: Optional[np.ndarray]) -> Optional[np.ndarray]:
            return None if col is None else col[index]

        return SampleTable(**{name: pick(getattr(self, name)) for name in self.__dataclass_fields__})

    def sample(self, i: int) -> Sample:
        return Sample(
            key=str(self.key[i]), subject=str(self.subject[i]), action=str(self.action[i]),
            camera=str(self.camera[i]), frame=int(self.frame[i]), image=str(self.image[i]),
            center=(float(self.center[i, 0]), float(self.center[i, 1])), scale=float(self.scale[i]),
            params=self.params[i], joints=None if self.joints is None else self.joints[i],
            cam_K=None if self.cam_K is None else self.cam_K[i], source=str(self.source[i]),
            row=int(self.row[i]), problem=str(self.problem[i]),
        )

    def __iter__(self):
        return (self.sample(i) for i in range(len(self)))


def concat(tables: Sequence[SampleTable], names: Sequence[str]) -> SampleTable:
    """Join tables from several source files; they must agree on what they carry."""
    first = tables[0]
    for table, name in zip(tables[1:], names[1:]):
        if table.params.shape[1] != first.params.shape[1]:
            raise MeshrecError(f"{names[0]} and {name} disagree on translation: parameter vectors of "
                               f"{first.params.shape[1]} and {table.params.shape[1]} entries")
        for col in ("joints", "cam_K"):
            if (getattr(table, col) is None) != (getattr(first, col) is None):
                raise MeshrecError(f"{names[0]} and {name} disagree on '{col}': one has it, one does not")

    def cat(col: str) -> Optional[np.ndarray]:
        parts = [getattr(t, col) for t in tables]
        return None if parts[0] is None else np.concatenate(parts)

    return SampleTable(**{col: cat(col) for col in SampleTable.__dataclass_fields__})


def check_row(sample: Sample) -> str | None:
    """Why a sample cannot be packed from its numbers alone (None: it can)."""
    if sample.problem:
        return sample.problem
    if not np.isfinite(sample.params).all():
        return "SMPL parameters contain NaN or Inf"
    if not (np.isfinite(sample.center).all() and np.isfinite(sample.scale)):
        return "box centre or scale is NaN or Inf"
    if sample.scale <= 0:
        return f"box scale {sample.scale:g} is not positive"
    if sample.joints is not None and not np.isfinite(sample.joints).all():
        return "3D joints contain NaN or Inf"
    if sample.cam_K is not None and not np.isfinite(sample.cam_K).all():
        return "camera intrinsics contain NaN or Inf"
    return None

"""The one record every source adapter produces: `Sample`, stored column-wise as `SampleTable`.

Coordinates are full-frame pixels in OpenCV's convention (pixel (i, j) has its centre at
x=i, y=j). The person box is SPIN's: centre `center`, side 200·`scale` pixels.

Labels are optional per sample: SMPL parameters (`has_smpl`; `params` is zeros where absent),
Human3.6M's 17 3D joints `j3d` and 2D keypoints `kp2d` (confidence 0 where absent; None when a
whole source set has none). Most Human3.6M users hold joints without SMPL (SPIN's files).
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
    params: np.ndarray            # float64, meshrec's parameter layout (82 or 85); zeros if not has_smpl
    has_smpl: bool                # params is a real SMPL label
    j3d: Optional[np.ndarray]     # (17, 4) H36M joints, pelvis-centred metres + confidence
    kp2d: Optional[np.ndarray]    # (17, 3) H36M keypoints, full-frame px (OpenCV) + confidence
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
    params: np.ndarray    # (N, P) float64, zeros where not has_smpl
    has_smpl: np.ndarray  # (N,) bool
    j3d: Optional[np.ndarray]     # (N, 17, 4) float64
    kp2d: Optional[np.ndarray]    # (N, 17, 3) float64
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
            params=self.params[i], has_smpl=bool(self.has_smpl[i]),
            j3d=None if self.j3d is None else self.j3d[i],
            kp2d=None if self.kp2d is None else self.kp2d[i],
            cam_K=None if self.cam_K is None else self.cam_K[i], source=str(self.source[i]),
            row=int(self.row[i]), problem=str(self.problem[i]),
        )

    def __iter__(self):
        return (self.sample(i) for i in range(len(self)))


def concat(tables: Sequence[SampleTable], names: Sequence[str]) -> SampleTable:
    """Join tables from several source files (e.g. SPIN's training file with `part` and its
    evaluation file without): a label one file lacks becomes zeros (confidence 0, no SMPL)."""
    labelled = [(t, n) for t, n in zip(tables, names) if t.has_smpl.any()]
    width = labelled[0][0].params.shape[1] if labelled else layout.SIZE
    for table, name in labelled[1:]:
        if table.params.shape[1] != width:
            raise MeshrecError(f"{labelled[0][1]} and {name} disagree on translation: parameter "
                               f"vectors of {width} and {table.params.shape[1]} entries")
    # Intrinsics are metadata (the crop's json): kept only when every source has them.
    keep_k = all(t.cam_K is not None for t in tables)

    def cat(col: str) -> Optional[np.ndarray]:
        parts = [getattr(t, col) for t in tables]
        if col == "cam_K" and not keep_k:
            return None
        if col == "params":
            parts = [p if p.shape[1] == width else np.zeros((len(p), width)) for p in parts]
        elif col in ("j3d", "kp2d") and any(p is not None for p in parts):
            shape = next(p.shape[1:] for p in parts if p is not None)
            parts = [np.zeros((len(t), *shape)) if p is None else p for t, p in zip(tables, parts)]
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
    if sample.j3d is not None and not np.isfinite(sample.j3d).all():
        return "3D joints (S) contain NaN or Inf"
    if sample.kp2d is not None and not np.isfinite(sample.kp2d).all():
        return "2D keypoints (part) contain NaN or Inf"
    if sample.cam_K is not None and not np.isfinite(sample.cam_K).all():
        return "camera intrinsics contain NaN or Inf"
    return None

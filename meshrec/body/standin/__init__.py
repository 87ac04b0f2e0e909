"""The licence-free stand-in body model, in SMPL's exact format and sizes (`build`, which has the
whole recipe): shape.py (skeleton and signed-distance surface) → mesh.py (closed 6,890-vertex
mesh) → rig.py (skinning weights, joint regressor, blend shapes) → sym.py (left/right symmetric
rig); h36m.py makes a stand-in Human3.6M joint regressor for any SMPL-format body."""

from meshrec.body.standin.build import SHAPE_NAMES, VERSION, build_standin, write_standin

__all__ = ["SHAPE_NAMES", "VERSION", "build_standin", "write_standin"]

"""meshrec: single-image 3D human mesh recovery (SMPL), trained with DDP on SLURM."""

__version__ = "0.1.0"

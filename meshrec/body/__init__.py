"""Body model: SMPL-format files, the licence-free stand-in, rotations and the parameter layout."""

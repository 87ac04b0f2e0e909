"""Sweeps and launches: grids of configs → cells → submitit jobs (SLURM or local)."""

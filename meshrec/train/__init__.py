"""Training: distributed setup, checkpoints, loop."""

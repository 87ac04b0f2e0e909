"""Data loading: shards → augmented, normalised batches (DALI, or a torch fallback)."""

from meshrec.data.loader import build_loader

__all__ = ["build_loader"]

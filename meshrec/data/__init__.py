"""Data loading: shards → augmented, normalised batches (DALI, or a torch fallback)."""

from meshrec.data.loader import build_loader
from meshrec.data.shardset import split_labels

__all__ = ["build_loader", "split_labels"]

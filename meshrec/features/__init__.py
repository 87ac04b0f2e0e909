"""The frozen-encoder feature cache: `cache` (what a cache is, where it lives, whether it fits a
config), `build` (`meshrec features`), `loader` (batches from a cache), `commands` (the CLI)."""

# meshrec/launch/feature_job.py still reads these three from the package; new code imports
# meshrec.features.cache.
from meshrec.features.cache import cache_dir, check, share_key

__all__ = ["cache_dir", "check", "share_key"]

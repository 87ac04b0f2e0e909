"""The frozen-encoder feature cache: `cache` (what a cache is, where it lives, whether it fits a
config), `build` (`meshrec features`), `loader` (batches from a cache), `commands` (the CLI)."""

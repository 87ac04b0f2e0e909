"""`meshrec features`: build (or find) the frozen-encoder feature cache of a config."""

from __future__ import annotations

import argparse


def _features(args: argparse.Namespace) -> int:
    import json

    from meshrec.features import cache as fc
    from meshrec.config import load_config, to_dict
    from meshrec.data.demo import with_shards
    from meshrec.errors import MeshrecError
    from meshrec.features.build import run_features
    from meshrec.train import dist

    cfg = load_config(args.config, args.overrides)
    if not cfg.model.freeze_encoder:
        raise MeshrecError("model.freeze_encoder is false: only a frozen encoder's features can "
                           "be cached")
    if cfg.train.processes > 1 and dist.detect_launch().source == "single":
        cfg = with_shards(cfg)  # once here, not raced by the ranks
        dist.spawn_local(_spawned, cfg.train.processes, to_dict(cfg), args.force)
        root = fc.cache_dir(cfg)
    else:
        root = run_features(cfg, args.force)
    manifest = fc.read_manifest(root)
    if manifest is None:  # a rank other than 0 in a launcher: rank 0 reports
        return 0
    built = manifest["built"]
    rate = built["samples"] / max(built["seconds"], 1e-9)
    print(f"feature cache {root}: {built['samples']} crops in views {', '.join(manifest['views'])}; "
          f"built {built['at']} in {built['seconds']:.1f} s ({rate:.1f} crops/s, "
          f"{built['ranks']} rank(s) on {built['device']})")
    print(json.dumps({"dir": str(root), "samples": built["samples"]}))
    return 0


def _spawned(cfg_dict: dict, force: bool) -> None:
    """Entry of a process started by `train.processes=N` (module level: spawn pickles it)."""
    from meshrec.config import from_dict
    from meshrec.features.build import run_features

    run_features(from_dict(cfg_dict, "train.processes"), force)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="encode every crop once with the frozen encoder (a cache "
                                        "that training and sweeps read)",
                       description="Build the frozen-encoder feature cache of a config (DDP over "
                                   "the launcher's ranks, or train.processes=N local ones). An "
                                   "up-to-date cache is found and kept; train with "
                                   "features.enabled=true to read it.")
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date cache exists")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=_features)

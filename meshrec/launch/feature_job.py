"""A sweep's frozen-encoder feature cache: whether its cells can train from one cache, and the
job that builds it.

The sweep uses the cache when every cell it is about to run keeps its encoder frozen and all of
them see the same images through the same encoder (one `meshrec.features.cache.share_key`). The cells
then train with `features.enabled=true`; if `meshrec.features.cache.check` finds no complete matching
cache, one `FeatureJob` (the resources of one cell, its tasks the DDP ranks of
`meshrec.features.build.run_features`) runs before them: on SLURM the cell array depends on it
(`afterok`), locally the sweep waits for it. A cache that is already there is reused: no job.

`--no-feature-cache` (`use_cache=False`) leaves the cells' configs as written and submits no
feature job. Cells whose own config asks for `features.enabled=true` and get no feature job need a
complete cache already; without one the sweep stops before queueing anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import submitit

from meshrec.config import Config, to_dict, with_overrides
from meshrec.errors import MeshrecError

ENABLE = "features.enabled=true"


@dataclasses.dataclass(frozen=True)
class FeaturePlan:
    use: bool                        # the cells train from the cache (features.enabled=true)
    build: Optional[Config]          # the config a feature job runs; None: no job
    cache: str                       # the cache directory ('' when not used)
    reason: str                      # one line for the user: what happens and why

    def cells(self, configs: Mapping[str, Config]) -> dict[str, Config]:
        """The cells' job configs, switched to the cache when it is used."""
        if not self.use:
            return dict(configs)
        return {name: (cfg if cfg.features.enabled else
                       with_overrides(cfg, [ENABLE], f"cell {name}"))
                for name, cfg in configs.items()}


def share_keys(configs: Mapping[str, Config]) -> dict[str, str]:
    """Cell name → its cache's share key, for the frozen cells (their shards resolved)."""
    from meshrec.features.cache import share_key

    return {name: share_key(cfg) for name, cfg in configs.items() if cfg.model.freeze_encoder}


def decide(configs: Mapping[str, Config], keys: Mapping[str, str],
           use_cache: bool = True, dry_run: bool = False) -> FeaturePlan:
    """What the sweep does about features for the cells it is about to run (`configs`: their
    job configs, `keys`: `share_keys` of at least those). Checks caches; builds nothing.
    `dry_run`: the reason says what a launch would do."""
    from meshrec.features.cache import cache_dir, check

    if not configs:
        return FeaturePlan(False, None, "", "")
    unfrozen = [n for n, c in configs.items() if not c.model.freeze_encoder]
    distinct = {keys[n] for n in configs} if use_cache and not unfrozen else set()
    if not use_cache:
        why = "feature cache: off (--no-feature-cache)"
    elif unfrozen:
        why = (f"feature cache: not used ({len(unfrozen)} of {len(configs)} cell(s) train their "
               f"encoder: model.freeze_encoder=false)")
    elif len(distinct) > 1:
        why = (f"feature cache: not used (the cells' encoders see {len(distinct)} different "
               f"inputs: no one cache serves them all)")
    else:
        name, cfg = next(iter(configs.items()))
        cfg = cfg if cfg.features.enabled else with_overrides(cfg, [ENABLE], f"cell {name}")
        where = str(cache_dir(cfg))
        unusable = check(cfg)
        if unusable is None:
            return FeaturePlan(True, None, where, f"feature cache: reusing the complete cache in "
                                                  f"{where}; no feature job")
        build, rebuild = ("would build", "would rebuild") if dry_run else ("builds", "rebuilds")
        if unusable.kind == "missing":
            return FeaturePlan(True, cfg, where, f"feature cache: none yet in {where}; one "
                                                 f"feature job {build} it before the cells")
        return FeaturePlan(True, cfg, where, f"feature cache: one feature job {rebuild} it "
                                             f"before the cells ({unusable.what})")
    _require_own_caches(configs, keys)
    return FeaturePlan(False, None, "", why)


def _require_own_caches(configs: Mapping[str, Config], keys: Mapping[str, str]) -> None:
    """Cells that ask for features.enabled themselves, when the sweep builds none: their cache
    must be there already (one check per distinct cache)."""
    from meshrec.features.cache import check

    seen: set[str] = set()
    for name, cfg in configs.items():
        if not cfg.features.enabled or keys[name] in seen:
            continue
        seen.add(keys[name])
        unusable = check(cfg)
        if unusable is not None:
            raise MeshrecError(f"cell {name}: features.enabled=true but {unusable}, or let the "
                               f"sweep build it (one shared frozen encoder, without "
                               f"--no-feature-cache)")


class FeatureJob(submitit.helpers.Checkpointable):
    """The sweep's feature cache build, in every task of its job (the DDP ranks)."""

    def __init__(self, config: dict) -> None:
        self.config = config           # plain dict: pickles without the package's classes

    @classmethod
    def of(cls, cfg: Config) -> "FeatureJob":
        return cls(to_dict(cfg))

    def __call__(self) -> str:
        from meshrec.config import from_dict
        from meshrec.features.build import run_features

        return str(run_features(from_dict(self.config, "feature job")))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Requeued as it is: the build starts again (nothing heavy in the signal handler).
        return submitit.helpers.DelayedSubmission(FeatureJob(self.config))

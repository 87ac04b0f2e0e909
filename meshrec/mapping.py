"""Nested mappings ↔ dotted keys: the one flattening that MLflow params, checkpoint config
comparisons and sweep overrides share."""

from __future__ import annotations

from typing import Any, Mapping


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1, "c": {}}} → {"a.b": 1, "a.c": {}}: dotted keys in order, leaf values as they
    are (an empty mapping is a leaf)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out

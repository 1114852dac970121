"""Dotted config keys ("train.scheduled_sampling.max_rate") and the nested dicts they address.

The one place that converts between the two forms: the ablation grid, the search space, `--set`
overrides and MLflow params all name config keys by dotted path.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

KeyPath = tuple  # a key path: ("train", "scheduled_sampling", "max_rate")


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf of `nested` under its dotted key. Lists are leaves; an empty dict stays a leaf."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def set_path(nested: dict, path: Sequence[str], value: Any) -> None:
    """Set `nested[path[0]][path[1]]... = value` in place; a non-dict on the way is replaced by a dict."""
    node = nested
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def apply_overrides(nested: Mapping[str, Any], dotted: Mapping[str, Any]) -> dict:
    """A deep copy of `nested` with each dotted key set to its value (a mapping value replaces, not merges)."""
    result = copy.deepcopy(dict(nested))
    for key, value in dotted.items():
        set_path(result, key.split("."), copy.deepcopy(value))
    return result


def to_nested(dotted: Mapping[str, Any]) -> dict:
    """The nested dict that `flatten` would turn into `dotted`."""
    return apply_overrides({}, dotted)


def deep_merge(base: Mapping[str, Any], child: Mapping[str, Any], atomic: Collection[KeyPath] = (),
               _at: KeyPath = ()) -> dict:
    """`base` overridden key by key by `child`; dicts merge recursively except at the `atomic` paths,
    where the child's dict replaces the base's wholesale. Neither input is modified."""
    merged = dict(base)
    for key, value in child.items():
        path = _at + (key,)
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and path not in atomic:
            merged[key] = deep_merge(merged[key], value, atomic, path)
        else:
            merged[key] = value
    return merged


def nearest(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate a typo most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def overlaps(key: str, other: str) -> bool:
    """Whether setting one dotted key sets the other: the same key, or one a section of the other."""
    shorter, longer = sorted((key.split("."), other.split(".")), key=len)
    return longer[:len(shorter)] == shorter

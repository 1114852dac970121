"""The experiment YAML read into an `ExperimentConfig`: bases merged, `--set` overrides applied, every
error named by the file and line (or the --set) that wrote it.

Inheritance: `base: other.yaml` (relative to the file that names it, recursive) is loaded first and
this file overrides it key by key. Two mappings are replaced wholesale instead of merged:
`ablation` and `search.space`. A child experiment states its whole grid and its whole space, so a
base's grid entries never multiply a child's trials unseen.

`--set key=value` sets exactly that key after inheritance (a mapping value replaces the mapping
there); `ablation.<key>=[...]` and `search.space.<key>={...}` set one entry of those mappings.
Values are parsed as YAML, so `1e-3` is a float, `[lstm, gru]` a list and `null` is None.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from orchestrator.credentials import masked
from orchestrator.experiment.keys import KeyPath, deep_merge, overlaps, set_path
from orchestrator.experiment.schema import ATOMIC, ConfigError, ExperimentConfig, dotted, explain
from trainers.config import without_retired_keys
from trainers.errors import InputError

def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), *, check_files: bool = True,
                saved: bool = False, trials: bool = True) -> ExperimentConfig:
    """Read an experiment YAML (with its bases), apply `--set key=value` overrides and validate it all.
    Raises InputError naming the file and line (or the --set) of what is wrong.

    `check_files=False` leaves out the check that weights files exist (for a config whose weights
    settings are about to be overridden, as `--smoke` does). `saved=True` reads a config orch wrote
    itself (a run's orch.yaml), dropping the keys older versions wrote that nothing reads now.
    `trials=False` is for `orch train` (one process, no Ray): nothing is reserved, so train.device is
    not held to resources.gpu."""
    written, written_origins = _read_with_bases(Path(path), str(path), chain=())
    if saved:
        written = without_retired_keys(written)
    parsed = [(override, *_parse_override(override)) for override in overrides]
    raw, origins = _with_overrides(written, written_origins, parsed)
    _refuse_overridden_factors(raw, parsed, origins, str(path))
    problems = _problems(raw, check_files, trials)
    if isinstance(problems, ExperimentConfig):
        return problems
    blamed: dict[int, list] = {}  # index of a --set -> the problems without it (computed when needed)

    def origin(problem: tuple[KeyPath, str]) -> str:
        """Where a problem came from: the file line or --set that wrote its key, unless the file alone
        is fine there and the problem comes from a --set elsewhere (--set model.decoder=mrnn breaks
        the model section the file wrote): then that --set."""
        where = _origin(origins, problem[0], str(path))
        if where.startswith("--set "):
            return where
        for index in range(len(parsed)):
            if index not in blamed:
                others = parsed[:index] + parsed[index + 1:]
                without = _problems(_with_overrides(written, written_origins, others)[0], check_files, trials)
                blamed[index] = [] if isinstance(without, ExperimentConfig) else without
        culprits = [f"--set {parsed[index][0]}" for index, without in blamed.items() if problem not in without]
        return ", ".join(culprits) or where

    raise InputError("\n".join(f"{origin(problem)}: {problem[1]}" for problem in problems))


def _refuse_overridden_factors(raw: dict, parsed: Sequence[tuple[str, KeyPath, Any]], origins: Mapping[KeyPath, str],
                               path: str) -> None:
    """A --set of a key the grid or the search sets in every trial would be silently lost: refused,
    naming both. A --set that drops the grid (`ablation={}`) or the search first frees its keys."""
    factors = {(section, key): what for section, what in ((("ablation",), "a factor of the ablation grid"),
                                                          (("search", "space"), "drawn by the search"))
               for key in _entries(raw, section)}
    for override, key_path, _ in parsed:
        for (section, key), what in factors.items():
            if overlaps(dotted(key_path), key):
                where = _origin(origins, (*section, key), path)
                raise InputError(f"--set {override}: {key} is {what} ({dotted(section)} in {where}), which sets it "
                                 f"in every trial (drop the --set, or change {dotted((*section, key))} instead)")


def _entries(raw: dict, section: KeyPath) -> list[str]:
    """The dotted keys a grid or search-space mapping of the raw config names (none when it is not a mapping)."""
    found: Any = raw
    for name in section:
        found = found.get(name) if isinstance(found, dict) else None
    return [key for key in found if isinstance(key, str)] if isinstance(found, dict) else []


def _with_overrides(written: dict, origins: dict[KeyPath, str], parsed: Sequence[tuple[str, KeyPath, Any]]
                    ) -> tuple[dict, dict[KeyPath, str]]:
    """The file's mapping with the parsed `--set` overrides applied in order, and where each key came from."""
    raw = copy.deepcopy(written)
    for override, key_path, value in parsed:
        set_path(raw, key_path, copy.deepcopy(value))
        origins = {p: o for p, o in origins.items() if p[:len(key_path)] != key_path}
        origins[key_path] = f"--set {override}"
    return raw, origins


def _problems(raw: dict, check_files: bool, trials: bool = True) -> ExperimentConfig | list[tuple[KeyPath, str]]:
    """The validated experiment, or what is wrong with it: (key path, sentence naming the key)."""
    try:
        return ExperimentConfig.model_validate(raw, context={"check_files": check_files, "trials": trials})
    except ValidationError as error:
        return explain(error)
    except ConfigError as error:
        return [(error.path, error.reason)]


def dump_resolved(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML: every default filled in, the bases already merged; a password in
    tracking.uri masked (orchestrator.credentials: `orch resume` takes it back from MLFLOW_TRACKING_URI)."""
    document = config.model_dump(mode="json", exclude={"base"})
    if document["tracking"]["uri"]:
        document["tracking"]["uri"] = masked(document["tracking"]["uri"])
    return yaml.safe_dump(document, sort_keys=False)


# --- reading YAML with the line of every key ---------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; people write both)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _read_with_bases(path: Path, shown: str, chain: tuple[Path, ...]) -> tuple[dict, dict[KeyPath, str]]:
    """The file's mapping merged over its bases, and where each key path was written ("file:line")."""
    raw, origins = _read_yaml(path, shown)
    if not isinstance(raw, dict):
        raise InputError(f"{shown}: the top level must be a mapping of keys, got {type(raw).__name__}")
    if not raw and not chain:
        raise InputError(f"{shown}: the experiment file is empty (write at least `name:` and `data: {{prepared: "
                         f"...}}`; search_spaces/quickstart.yaml is a start)")
    base = raw.get("base")
    if base is None:
        return raw, origins
    where = origins[("base",)]
    if not isinstance(base, str):
        raise InputError(f"{where}: base must be a file name, got {base!r}")
    base_path = (path.parent / base).resolve()
    cycle = chain + (path.resolve(),)
    if base_path in cycle:
        names = " -> ".join(p.name for p in cycle + (base_path,))
        raise InputError(f"{where}: base files form a cycle: {names}")
    if not base_path.is_file():
        raise InputError(f"{where}: base file '{base}' not found (looked for {base_path})")
    base_shown = os.path.normpath(os.path.join(os.path.dirname(shown), base))
    base_raw, base_origins = _read_with_bases(base_path, base_shown, cycle)
    return deep_merge(base_raw, raw, atomic=ATOMIC), {**base_origins, **origins}


def _read_yaml(path: Path, shown: str) -> tuple[Any, dict[KeyPath, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file not found: {shown}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read config file {shown}: {error}") from None
    loader = _Loader(text)
    origins: dict[KeyPath, str] = {}
    try:
        node = loader.get_single_node()
        return ({} if node is None else _construct(loader, node, (), shown, origins)), origins
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        said = error.problem or error.context
        if error.problem and error.context and error.context_mark:
            said += f" ({error.context} on line {error.context_mark.line + 1})"
        raise InputError(f"{shown}:{mark.line + 1}: invalid YAML: {said}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{shown}: invalid YAML: {error}") from None
    finally:
        loader.dispose()


def _construct(loader: _Loader, node: yaml.Node, path: KeyPath, shown: str, origins: dict) -> Any:
    """The node's Python value, recording the line of every mapping key and list item under it."""
    if isinstance(node, yaml.MappingNode):
        _reject_duplicate_keys(loader, node, path, shown)
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        mapping = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise InputError(f"{shown}:{key_node.start_mark.line + 1}: key {key!r} must be a string")
            origins[path + (key,)] = f"{shown}:{key_node.start_mark.line + 1}"
            mapping[key] = _construct(loader, value_node, path + (key,), shown, origins)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            origins[path + (index,)] = f"{shown}:{item_node.start_mark.line + 1}"
            items.append(_construct(loader, item_node, path + (index,), shown, origins))
        return items
    return loader.construct_object(node, deep=True)


def _reject_duplicate_keys(loader: _Loader, node: yaml.MappingNode, path: KeyPath, shown: str) -> None:
    """PyYAML silently keeps the last of two equal keys; a config that says a thing twice is a mistake."""
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if isinstance(key, str) and key in first_line:
            raise InputError(f"{shown}:{line}: duplicate key '{dotted(path + (key,))}' "
                             f"(first on line {first_line[key]})")
        first_line[key] = line


def _parse_override(override: str) -> tuple[KeyPath, Any]:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {override}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
    key_path = _split_key(key)
    if not all(key_path):
        raise InputError(f"--set {override}: '{key}' is not a dotted key")
    if key_path == ("base",):
        raise InputError(f"--set {override}: base is read before --set applies; write it in the YAML file")
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as error:
        reason = getattr(error, "problem", None) or error
        raise InputError(f"--set {override}: the value is not valid YAML ({reason})") from None
    return key_path, value


def _split_key(dotted: str) -> KeyPath:
    """A dotted key as a key path; inside `ablation` and `search.space` the rest is one dotted entry."""
    for atomic in ATOMIC:
        prefix = ".".join(atomic) + "."
        if dotted.startswith(prefix):
            return atomic + (dotted[len(prefix):],)
    return tuple(dotted.split("."))


def _origin(origins: Mapping[KeyPath, str], path: KeyPath, fallback: str) -> str:
    """Where the longest written prefix of `path` came from, else the first key written under it
    (a --set of `modle.decoder` answers for `modle`), else the top file."""
    for end in range(len(path), 0, -1):
        if path[:end] in origins:
            return origins[path[:end]]
    below = (origin for written, origin in origins.items() if path and written[:len(path)] == path)
    return next(below, fallback)

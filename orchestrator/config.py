"""The experiment YAML: its schema (`ExperimentConfig`) and its loader (`load_config`).

An experiment file holds the trainer's sections (`data`, `model`, `train`, `decode`, `eval`: see
`trainers.config`) plus the orchestrator's own: `ablation`, `search`, `scheduler`, `resources`,
`tracking`, `ray`. It is validated once, here; every error names the file and line it came from.

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
import itertools
import json
import math
import os
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_serializer,
                      model_validator)

from orchestrator.keys import KeyPath, apply_overrides, deep_merge, nearest, set_path
from orchestrator.storage import default_tracking_uri
from trainers.config import (METRIC_NAMES, Strict, TrainerConfig, is_weights_name, reported_metrics,
                             weights_problem, without_retired_keys)
from trainers.errors import InputError

TRIAL_SECTIONS = ("data", "model", "train", "decode", "eval")  # what an ablation or a search may vary
ATOMIC = (("ablation",), ("search", "space"))  # mappings keyed by dotted keys: replaced, never merged
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")


class ConfigError(InputError):
    """A bad value at a key path; `load_config` prefixes the file and line that wrote it."""

    def __init__(self, path: KeyPath, reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


class SearchDimension(Strict):
    """One search-space entry, written `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`,
    `{int: [lo, hi]}` (both ends included) or `{choice: [a, b, ...]}`."""

    kind: Literal["uniform", "loguniform", "int", "choice"]
    args: list  # [lo, hi] for the ranges, the options for choice

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data):
        if not isinstance(data, Mapping) or len(data) != 1:
            raise ValueError("write one distribution: {uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
                             "{int: [lo, hi]} or {choice: [a, b, ...]}")
        ((kind, args),) = data.items()
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {kind!r}: use one of {', '.join(DISTRIBUTIONS)}")
        return {"kind": kind, "args": args}

    @model_validator(mode="after")
    def _args_fit_kind(self):
        if self.kind == "choice":
            if not self.args:
                raise ValueError("choice needs at least one option")
            return self
        numbers = [a for a in self.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if len(self.args) != 2 or len(numbers) != 2:
            raise ValueError(f"{self.kind} needs two numbers [lo, hi], got {self.args}")
        lo, hi = numbers
        if not lo < hi:
            raise ValueError(f"{self.kind} needs lo < hi, got [{lo}, {hi}]")
        if self.kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform needs lo > 0, got {lo}")
        if self.kind == "int" and not all(isinstance(a, int) for a in numbers):
            raise ValueError(f"int needs whole-number bounds, got [{lo}, {hi}]")
        return self

    @model_serializer
    def _to_yaml(self) -> dict:
        return {self.kind: self.args}

    def probe_values(self) -> list:
        """Values that must all be valid for the key: the bounds, then an interior point an irrational
        fraction of the way in (so a float range over an integer key is caught), or every choice."""
        if self.kind == "choice":
            return list(self.args)
        lo, hi = self.args
        if self.kind == "loguniform":
            return [lo, hi, math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * math.sqrt(0.5))]
        if self.kind == "uniform":
            return [lo, hi, lo + (hi - lo) * math.sqrt(0.5)]
        return [lo, hi]


class SearchConfig(Strict):
    """Hyper-parameter search inside every grid cell: Ray Tune draws `num_samples` points of `space`."""

    algorithm: Literal["optuna", "random"] = "optuna"
    num_samples: int = Field(10, ge=1)
    metric: str | None = None  # default: eval.select_by
    mode: Literal["max", "min"] = "max"
    max_concurrent: int | None = Field(None, ge=1)
    space: dict[str, SearchDimension] = Field(..., min_length=1)


class SchedulerConfig(Strict):
    """Early stopping of unpromising trials (Ray Tune trial schedulers); fifo runs every trial to the end."""

    kind: Literal["fifo", "asha", "median"] = "fifo"
    grace_period: int = Field(1, ge=1)  # epochs before a trial may be stopped
    reduction_factor: float = Field(3.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)  # default: the most epochs any trial may train


class ResourcesConfig(Strict):
    """What Ray reserves for each trial. A fraction of a GPU packs trials: 0.25 runs 4 per GPU.

    A trial trains on the device it reserved (orchestrator.trainable): on its GPU when `gpu` > 0,
    else on the CPU with CUDA hidden. It trains on one device, so it never reserves more than one GPU."""

    cpu: float = Field(1.0, ge=0.0)
    gpu: float = Field(0.0, ge=0.0)
    max_concurrent: int | None = Field(None, ge=1)

    @field_validator("gpu")
    @classmethod
    def _one_gpu_at_most(cls, v: float) -> float:
        if v > 1:
            raise ValueError("a trial trains on one device and there is no multi-GPU trainer: use 1 (a whole GPU) "
                             "or a fraction such as 0.5 (2 trials share a GPU)")
        return v


TRACKING_SCHEMES = ("http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql", "file")


class TrackingConfig(Strict):
    uri: str | None = None  # default: sqlite:///<ray.storage, absolute>/mlflow.db
    experiment: str | None = None  # default: name

    @field_validator("uri")
    @classmethod
    def _a_tracking_uri(cls, v: str | None) -> str | None:
        """A URI MLflow can open; anything else (a bare word, host:port, a path) would make MLflow
        write a `./mlruns` folder or fail deep inside the first trial."""
        if v is None:
            return v
        scheme = v.partition("://")[0].split("+")[0].lower() if "://" in v else ""
        if scheme not in TRACKING_SCHEMES or not v.partition("://")[2].strip("/") or any(c.isspace() for c in v):
            raise ValueError(f"{v!r} is not a tracking URI: write http://host:5000 (an MLflow server), "
                             f"sqlite:///path/mlflow.db, postgresql://user@host/db or file:///folder")
        return v


_RAY_ADDRESS = re.compile(r"^(auto|ray://\S+|[^\s:/]+:\d+)$")


class RayConfig(Strict):
    address: str | None = None  # None: start a local Ray for this run
    storage: str = "results"  # a local folder, a shared mount, or a URI such as s3://bucket/prefix
    max_failures: int = Field(2, ge=-1)  # retries of a failed trial; -1 retries forever
    keep_checkpoints: int = Field(1, ge=1)  # the newest; each holds the best weights too
    autoscaling: bool = False  # the cluster adds GPU nodes on demand: its GPUs are not counted before the run

    @field_validator("address")
    @classmethod
    def _known_form(cls, v: str | None) -> str | None:
        if v is not None and not _RAY_ADDRESS.match(v):
            raise ValueError("must be null (a local Ray for this run), 'auto' (the running cluster), "
                             "'host:port' or 'ray://host:port'")
        return v


class ExperimentConfig(TrainerConfig):
    """One experiment, fully resolved: the trainer's sections plus how to vary, schedule, place and
    record its trials. Build it with `load_config`, which also says where a bad value was written;
    built directly, a bad field raises pydantic's ValidationError and a bad grid or search ConfigError."""

    base: str | None = None  # the file this one inherited from, as written; load_config merged it
    ablation: dict[str, list] = {}  # dotted key -> values; the grid is their cartesian product
    search: SearchConfig | None = None
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo):
        self._fill_defaults()
        self._check_ablation()
        self._check_search()
        self._check_search_metric()
        if (info.context or {}).get("check_files", True):
            self._check_weights_files()
        if (info.context or {}).get("trials", True):
            self._check_device_reservation()
        self._fill_max_t()
        return self

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Every dotted leaf key an experiment file may set."""
        return [_dotted(path) for path, is_leaf in _key_tree(cls).items() if is_leaf]

    @classmethod
    def trial_keys(cls) -> list[str]:
        """The leaf keys an ablation or a search may vary (those the trainer reads)."""
        return [key for key in cls.valid_keys() if key.split(".")[0] in TRIAL_SECTIONS]

    def trainer_config(self, overrides: Mapping[str, Any] | None = None) -> TrainerConfig:
        """The sections a trainer reads, with a trial's dotted overrides applied and validated
        (a bad override raises ConfigError, an InputError, naming the key and the reason)."""
        return _validate_trainer(self._trainer_dict(), overrides or {})

    def _trainer_dict(self) -> dict:
        return self.model_dump(include=set(TrainerConfig.model_fields))

    def _fill_defaults(self) -> None:
        if self.search is not None and self.search.metric is None:
            self.search.metric = self.eval.select_by
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        if self.tracking.uri is None:
            try:  # a bucket storage needs a tracking.uri: sqlite cannot live in a bucket
                self.tracking.uri = default_tracking_uri(self.ray.storage)
            except InputError as error:
                raise ConfigError(("ray", "storage"), str(error)) from None
        elif self.tracking.uri.startswith("sqlite:///") and not self.tracking.uri.startswith("sqlite:////"):
            # Trials run in their own working folders: a relative sqlite path would scatter the store.
            self.tracking.uri = f"sqlite:///{Path(self.tracking.uri[len('sqlite:///'):]).resolve()}"

    def _check_ablation(self) -> None:
        """Every ablation key is a trial key, every list is non-empty without repeats, every cell is valid."""
        for key, values in self.ablation.items():
            _check_trial_key(("ablation", key), key, "ablation")
            if not values:
                raise ConfigError(("ablation", key), f"ablation {key}: empty list, give at least one value")
            seen = set()
            for index, value in enumerate(values):
                fingerprint = json.dumps(value, sort_keys=True, default=str)
                if fingerprint in seen:
                    raise ConfigError(("ablation", key, index),
                                      f"ablation {key}: value {_shown(value)} is listed twice")
                seen.add(fingerprint)
        keys = list(self.ablation)
        base = self._trainer_dict()
        for indices in itertools.product(*(range(len(self.ablation[k])) for k in keys)):
            cell = {key: self.ablation[key][i] for key, i in zip(keys, indices)}
            try:
                _validate_trainer(base, cell)
            except ConfigError as error:
                raise _ablation_error(error, cell, dict(zip(keys, indices))) from None

    def _check_search(self) -> None:
        if self.search is None:
            return
        base = self._trainer_dict()
        for key, dimension in self.search.space.items():
            path = ("search", "space", key)
            _check_trial_key(path, key, "search.space")
            if key in self.ablation:
                raise ConfigError(path, f"search.space key '{key}' is also an ablation key: vary it in one place")
            for value in dimension.probe_values():
                try:
                    _validate_trainer(base, {key: value})
                except ConfigError as error:
                    raise ConfigError(path, f"search.space {key}: {dimension.kind} reaches {_shown(value)}, "
                                            f"which is invalid: {error.reason}") from None

    def _check_search_metric(self) -> None:
        """search.metric must be a val metric the trainer reports, in every cell of the grid."""
        if self.search is None:
            return
        metric = self.search.metric
        grid = "eval.metrics" in self.ablation  # then every cell computes its own eval.metrics
        for index, metrics in enumerate(self.ablation["eval.metrics"] if grid else [self.eval.metrics]):
            valid = reported_metrics(self.trainer, metrics)
            if metric in valid:
                continue
            if grid and metric in reported_metrics(self.trainer, METRIC_NAMES):
                raise ConfigError(("ablation", "eval.metrics", index),
                                  f"ablation value {_shown(metrics)} is invalid: search.metric {metric!r} is "
                                  "not computed without its family in eval.metrics")
            lowered = {name.lower(): name for name in valid}  # `cider` meant CIDEr
            close = lowered.get(nearest(metric.lower(), lowered))
            hint = f" — did you mean {close!r}?" if close else ""
            raise ConfigError(("search", "metric"), f"search.metric {metric!r} is not a val metric trainer "
                              f"{self.trainer} reports{hint} (choose one of {', '.join(valid)}: eval.select_by "
                              "names, where neg_loss ranks by val_loss)")

    def _check_device_reservation(self) -> None:
        """A trial trains where its reservation says (orchestrator.trainable): `cuda` when it reserves a
        GPU, `cpu` when it reserves none. A train.device that says otherwise, in the file, the grid or
        the search, would be overruled unseen: refused, naming both keys."""
        gpu = self.resources.gpu
        reserved, other = ("cuda", "cpu") if gpu > 0 else ("cpu", "cuda")
        why = (f"train.device is 'cuda' but resources.gpu is 0: a trial that reserves no GPU trains with CUDA "
               f"hidden (set resources.gpu: 1, or a fraction such as 0.5 to share a GPU; or train.device: auto)"
               if reserved == "cpu" else
               f"train.device is 'cpu' but resources.gpu is {gpu:g}: each trial would hold a GPU it never uses "
               f"(set resources.gpu: 0 to train on CPUs, or train.device: auto)")
        if self.train.device == other:
            raise ConfigError(("train", "device"), why)
        for index, value in enumerate(self.ablation.get("train.device", [])):
            if value == other:
                raise ConfigError(("ablation", "train.device", index),
                                  f"ablation value {_shown(value)} is invalid: {why}")
        dimension = self.search.space.get("train.device") if self.search is not None else None
        if dimension is not None and other in dimension.probe_values():
            raise ConfigError(("search", "space", "train.device"), f"search.space train.device reaches "
                              f"{_shown(other)}, which is invalid: {why}")

    def _check_weights_files(self) -> None:
        """A weights file must exist before anything starts (a relative path is relative to where orch
        runs, like data.prepared); it is then named by its absolute path, for trials run elsewhere."""
        def checked(path: KeyPath, key: str, value: Any) -> Any:
            if not isinstance(value, str) or is_weights_name(key, value):
                return value  # a wrong type is the schema's to report
            problem = weights_problem(key, value)
            if problem:
                raise ConfigError(path, f"ablation value {_shown(value)} is invalid: {problem}"
                                  if path[0] == "ablation" else problem)
            return str(Path(value).expanduser().resolve())

        self.model.weights = checked(("model", "weights"), "model.weights", self.model.weights)
        values = self.ablation.get("model.weights", [])
        values[:] = [checked(("ablation", "model.weights", i), "model.weights", v) for i, v in enumerate(values)]
        dimension = self.search.space.get("model.weights") if self.search is not None else None
        if dimension is not None and dimension.kind == "choice":
            dimension.args[:] = [checked(("search", "space", "model.weights"), "model.weights", v)
                                 for v in dimension.args]
        if self.trainer == "alignment" and self.alignment.regions == "detector":
            self.alignment.detector_weights = checked(("alignment", "detector_weights"), "alignment.detector_weights",
                                                      self.alignment.detector_weights)

    def _fill_max_t(self) -> None:
        if self.scheduler.max_t is None:
            epochs = [self.train.epochs, *self.ablation.get("train.epochs", [])]
            if self.search is not None and "train.epochs" in self.search.space:
                epochs += self.search.space["train.epochs"].probe_values()
            self.scheduler.max_t = int(max(float(e) for e in epochs))
        if self.scheduler.grace_period > self.scheduler.max_t:
            raise ConfigError(("scheduler", "grace_period"), f"scheduler.grace_period {self.scheduler.grace_period} "
                              f"is more than scheduler.max_t {self.scheduler.max_t}: no trial could be stopped")


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
            if overlaps(_dotted(key_path), key):
                where = _origin(origins, (*section, key), path)
                raise InputError(f"--set {override}: {key} is {what} ({_dotted(section)} in {where}), which sets it "
                                 f"in every trial (drop the --set, or change {_dotted((*section, key))} instead)")


def overlaps(key: str, other: str) -> bool:
    """Whether setting one dotted key sets the other: the same key, or one a section of the other."""
    shorter, longer = sorted((key.split("."), other.split(".")), key=len)
    return longer[:len(shorter)] == shorter


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
        return _explain(error)
    except ConfigError as error:
        return [(error.path, error.reason)]


def dump_resolved(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML: every default filled in, the bases already merged."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude={"base"}), sort_keys=False)


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
            raise InputError(f"{shown}:{line}: duplicate key '{_dotted(path + (key,))}' "
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


# --- the key tree and plain-words validation errors --------------------------------------------------

def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The config section an annotation holds (unwrapping `X | None`), or None for a leaf value."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _key_tree(model: type[BaseModel], prefix: KeyPath = ()) -> dict[KeyPath, bool]:
    """Every key path of a config model, in declaration order, mapped to whether it is a leaf."""
    tree: dict[KeyPath, bool] = {}
    for name, field in model.model_fields.items():
        section = _submodel(field.annotation)
        tree[prefix + (name,)] = section is None
        if section is not None:
            tree.update(_key_tree(section, prefix + (name,)))
    return tree


def _shown(value: Any) -> str:
    """A value as a YAML flow scalar would write it: "gru", 1.5, true, null, [1, 2]."""
    return json.dumps(value, default=str)


def _dotted(path: KeyPath) -> str:
    """A key path as users write it: model.decoder, eval.metrics[2], ablation.model.decoder."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validate_trainer(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> TrainerConfig:
    try:
        return TrainerConfig.model_validate(apply_overrides(base, overrides))
    except ValidationError as error:
        problems = _explain(error)
        raise ConfigError(problems[0][0], "; ".join(message for _, message in problems)) from None


def _check_trial_key(path: KeyPath, key: str, where: str) -> None:
    if key in _TRIAL_KEYS:
        return
    suggestion = _suggest(tuple(key.split(".")), [tuple(k.split(".")) for k in _TRIAL_KEYS])
    hint = f" — did you mean '{suggestion}'?" if suggestion else f" (a leaf key under {', '.join(TRIAL_SECTIONS)})"
    raise ConfigError(path, f"{where} key '{key}' is not a config key a trial can vary{hint}")


def _suggest(path: KeyPath, candidates: Iterable[KeyPath]) -> str | None:
    """The key a typo most likely meant: a close sibling, else the same name in another section."""
    candidates = list(candidates)
    close = nearest(path[-1], [c[-1] for c in candidates if c[:-1] == path[:-1]])
    if close:
        return _dotted(path[:-1] + (close,))
    return next((_dotted(c) for c in candidates if c[-1] == path[-1]), None)


def _ablation_error(error: ConfigError, cell: Mapping[str, Any], indices: Mapping[str, int]) -> ConfigError:
    """Point at the ablation value that broke a cell, or at the entry of the section that rejected it."""
    for key in cell:
        if error.path[:len(key.split("."))] == tuple(key.split(".")):
            return ConfigError(("ablation", key, indices[key]),
                               f"ablation value {_shown(cell[key])} is invalid: {error.reason}")
    culprit = next((k for k in cell if tuple(k.split("."))[:len(error.path)] == error.path), next(iter(cell)))
    described = ", ".join(f"{k}: {_shown(v)}" for k, v in cell.items())
    return ConfigError(("ablation", culprit), f"ablation cell {{{described}}} is invalid: {error.reason}")


def _explain(error: ValidationError) -> list[tuple[KeyPath, str]]:
    """pydantic's errors as (key path, sentence naming the key), one sentence per key."""
    unknown: list[tuple[KeyPath, str]] = []
    reasons: dict[KeyPath, list[str]] = {}
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            unknown.append((loc, _unknown_key_message(loc)))
        else:
            reasons.setdefault(_known_prefix(loc), []).append(_plain_reason(item))
    return unknown + [(path, f"{_dotted(path) or 'config'}: {'; '.join(said)}") for path, said in reasons.items()]


def _plain_reason(item: Mapping[str, Any]) -> str:
    message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = item.get("input")
    if item["type"] != "missing" and (value is None or isinstance(value, (str, int, float, bool))) \
            and not (isinstance(value, str) and repr(value) in message):  # a message that quotes it says it
        message += f" (got {_shown(value)})"
    return message


def _known_prefix(loc: KeyPath) -> KeyPath:
    """The part of a pydantic error location that names config keys (dropping union-member tags)."""
    path: KeyPath = ()
    for part in loc:
        if not _is_known(path + (part,)):
            break
        path += (part,)
    return path


def _is_known(path: KeyPath) -> bool:
    return (path in _KEY_TREE
            or path[:-1] in ATOMIC
            or (isinstance(path[-1], int) and len(path) > 1 and _is_known(path[:-1])))


def _unknown_key_message(loc: KeyPath) -> str:
    key = _dotted(loc)
    if loc not in _KEY_TREE and key in _ALL_KEYS:
        return f"unknown key '{key}' — in a YAML file write it nested ({loc[0].split('.')[0]}: {{...}})"
    suggestion = _suggest(loc, _KEY_TREE)
    if suggestion:
        return f"unknown key '{key}' — did you mean '{suggestion}'?"
    parent = loc[:-1]
    siblings = ", ".join(p[-1] for p in _KEY_TREE if p[:-1] == parent)
    return f"unknown key '{key}' (keys {'under ' + _dotted(parent) if parent else 'at the top level'}: {siblings})"


_KEY_TREE = _key_tree(ExperimentConfig)
_ALL_KEYS = [_dotted(path) for path in _KEY_TREE]
_TRIAL_KEYS = ExperimentConfig.trial_keys()

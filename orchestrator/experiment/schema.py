"""The experiment's schema: `ExperimentConfig`, the trainer's sections plus the orchestrator's own
(`ablation`, `search`, `scheduler`, `resources`, `tracking`, `ray`), validated once, with errors that
name the key in plain words (orchestrator.experiment.loader adds the file and line).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_serializer,
                      model_validator)

from orchestrator.experiment.keys import KeyPath, apply_overrides, nearest
from orchestrator.locations import DEFAULT_STORAGE, absolute_sqlite, default_tracking_uri, local_folder
from trainers.config import METRIC_NAMES, Strict, TrainerConfig, is_weights_name, reported_metrics, weights_problem
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

    def tune_domain(self):
        """This dimension as Ray Tune samples it (the `int` bounds both included)."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        lo, hi = self.args
        return {"uniform": tune.uniform, "loguniform": tune.loguniform}[self.kind](lo, hi) if self.kind != "int" \
            else tune.randint(lo, hi + 1)

    def optuna_distribution(self):
        """This dimension as Optuna describes it (for its parameter importances, orchestrator.reporting)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.args))
        if self.kind == "int":
            return IntDistribution(*self.args)
        return FloatDistribution(*self.args, log=self.kind == "loguniform")

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

    A trial trains on the device it reserved (orchestrator.cluster.trainable): on its GPU when `gpu` > 0,
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
    storage: str = DEFAULT_STORAGE  # a local folder, a shared mount, or a URI such as s3://bucket/prefix
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
        return [dotted(path) for path, is_leaf in _key_tree(cls).items() if is_leaf]

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
        """The settings a file may leave out, resolved once: every command reads them from here
        (orchestrator.settings). A local storage becomes its absolute folder (trials run elsewhere, and
        `orch resume` finds the run wherever it is started from)."""
        if self.search is not None and self.search.metric is None:
            self.search.metric = self.eval.select_by
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        try:
            folder = local_folder(self.ray.storage)
        except InputError as error:
            raise ConfigError(("ray", "storage"), str(error)) from None
        if folder is not None:
            self.ray.storage = str(folder)
        if self.tracking.uri is None:
            try:  # a bucket storage needs a tracking.uri: sqlite cannot live in a bucket
                self.tracking.uri = default_tracking_uri(self.ray.storage)
            except InputError as error:
                raise ConfigError(("ray", "storage"), str(error)) from None
        else:  # trials run in their own working folders: a relative sqlite path would scatter the store
            self.tracking.uri = absolute_sqlite(self.tracking.uri)

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
        """A trial trains where its reservation says (orchestrator.cluster.trainable): `cuda` when it reserves a
        GPU, `cpu` when it reserves none. A train.device that says otherwise, in the file, the grid or
        the search, would be overruled unseen: refused, naming both keys."""
        gpu = self.resources.gpu
        reserved, other = ("cuda", "cpu") if gpu > 0 else ("cpu", "cuda")
        why = ("train.device is 'cuda' but resources.gpu is 0: a trial that reserves no GPU trains with CUDA "
               "hidden (set resources.gpu: 1, or a fraction such as 0.5 to share a GPU; or train.device: auto)"
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


def dotted(path: KeyPath) -> str:
    """A key path as users write it: model.decoder, eval.metrics[2], ablation.model.decoder."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _validate_trainer(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> TrainerConfig:
    try:
        return TrainerConfig.model_validate(apply_overrides(base, overrides))
    except ValidationError as error:
        problems = explain(error)
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
        return dotted(path[:-1] + (close,))
    return next((dotted(c) for c in candidates if c[-1] == path[-1]), None)


def _ablation_error(error: ConfigError, cell: Mapping[str, Any], indices: Mapping[str, int]) -> ConfigError:
    """Point at the ablation value that broke a cell, or at the entry of the section that rejected it."""
    for key in cell:
        if error.path[:len(key.split("."))] == tuple(key.split(".")):
            return ConfigError(("ablation", key, indices[key]),
                               f"ablation value {_shown(cell[key])} is invalid: {error.reason}")
    culprit = next((k for k in cell if tuple(k.split("."))[:len(error.path)] == error.path), next(iter(cell)))
    described = ", ".join(f"{k}: {_shown(v)}" for k, v in cell.items())
    return ConfigError(("ablation", culprit), f"ablation cell {{{described}}} is invalid: {error.reason}")


def explain(error: ValidationError) -> list[tuple[KeyPath, str]]:
    """pydantic's errors as (key path, sentence naming the key), one sentence per key."""
    unknown: list[tuple[KeyPath, str]] = []
    reasons: dict[KeyPath, list[str]] = {}
    for item in error.errors():
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            unknown.append((loc, _unknown_key_message(loc)))
        else:
            reasons.setdefault(_known_prefix(loc), []).append(_plain_reason(item))
    return unknown + [(path, f"{dotted(path) or 'config'}: {'; '.join(said)}") for path, said in reasons.items()]


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
    key = dotted(loc)
    if loc not in _KEY_TREE and key in _ALL_KEYS:
        return f"unknown key '{key}' — in a YAML file write it nested ({loc[0].split('.')[0]}: {{...}})"
    suggestion = _suggest(loc, _KEY_TREE)
    if suggestion:
        return f"unknown key '{key}' — did you mean '{suggestion}'?"
    parent = loc[:-1]
    siblings = ", ".join(p[-1] for p in _KEY_TREE if p[:-1] == parent)
    return f"unknown key '{key}' (keys {'under ' + dotted(parent) if parent else 'at the top level'}: {siblings})"


_KEY_TREE = _key_tree(ExperimentConfig)
_ALL_KEYS = [dotted(path) for path in _KEY_TREE]
_TRIAL_KEYS = ExperimentConfig.trial_keys()

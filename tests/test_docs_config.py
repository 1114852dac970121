"""docs/config.md stays in step with the config schema: every key a YAML file may write has a row
in its tables, with the allowed values and the default the code has, and no row names a key the
code no longer has. Pure pydantic introspection: no Ray, no torch, no training."""

from __future__ import annotations

import math
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from orchestrator.experiment.schema import DISTRIBUTIONS, ExperimentConfig
from trainers.config import DETECTOR_NAMES, ENCODER_NAMES, TrainerConfig

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "config.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
ROW = re.compile(r"^\| `([A-Za-z_][\w.]*)` \|(.*)\|\s*$")


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config section an annotation holds (unwrapping `X | None`), or None for a leaf value."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, tuple[Any, bool]]:
    """Every dotted key of a config model -> (its pydantic FieldInfo, whether it is a leaf)."""
    keys: dict[str, tuple[Any, bool]] = {}
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        section = _section(field.annotation)
        keys[dotted] = (field, section is None)
        if section is not None:
            keys.update(_keys(section, f"{dotted}."))
    return keys


def _literals(annotation: Any) -> list:
    """The allowed values of every Literal inside an annotation (list[Literal[...]], X | None, ...)."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [value for arg in get_args(annotation) for value in _literals(arg)]


def _rows() -> dict[str, list[str]]:
    """Rows of the key tables (header `| Key | ...`), first cell a backticked key: key -> its other cells."""
    rows: dict[str, list[str]] = {}
    in_key_table = False
    for line in DOC.splitlines():
        if not line.startswith("|"):
            in_key_table = False
        elif line.startswith("| Key |"):
            in_key_table = True
        match = ROW.match(line) if in_key_table else None
        if match:
            key, rest = match.groups()
            assert key not in rows, f"docs/config.md documents {key} twice"
            rows[key] = [cell.strip() for cell in rest.split("|")]
    return rows


KEYS = {**_keys(TrainerConfig), **_keys(ExperimentConfig)}
LEAVES = sorted(key for key, (_, leaf) in KEYS.items() if leaf)
ROWS = _rows()


def _same(documented: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(documented, bool):
        return documented is default
    if isinstance(default, (int, float)) and isinstance(documented, (int, float)):
        return math.isclose(documented, default, rel_tol=1e-12, abs_tol=0.0)
    return documented == default


def test_the_walk_finds_the_schema():
    # A guard on the walk itself: sections, nested sections and the orchestrator's keys are all there.
    for key in ("model.decoder", "train.scheduled_sampling.max_rate", "data.synthetic.n",
                "search.space", "ray.storage", "alignment.beta", "ablation", "base"):
        assert key in KEYS
    assert set(ExperimentConfig.valid_keys()) == set(LEAVES)


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_appears_in_the_docs(key):
    assert f"`{key}`" in DOC, f"docs/config.md does not mention `{key}`: add it to its section's table"


@pytest.mark.parametrize("key", LEAVES)
def test_every_leaf_key_has_a_table_row(key):
    assert key in ROWS, f"docs/config.md has no table row for `{key}`"
    assert len(ROWS[key]) == 3 and ROWS[key][2], f"the row of `{key}` needs type, default and meaning cells"


@pytest.mark.parametrize("key", [k for k in LEAVES if _literals(KEYS[k][0].annotation)])
def test_every_allowed_value_is_listed(key):
    allowed = _literals(KEYS[key][0].annotation)
    row = " | ".join(ROWS.get(key, []))
    missing = [value for value in allowed if f"`{value}`" not in row]
    assert not missing, f"the row of `{key}` does not list the allowed value(s) {missing}"


@pytest.mark.parametrize("key", LEAVES)
def test_every_documented_default_is_the_codes(key):
    field = KEYS[key][0]
    cell = ROWS[key][1]
    if field.default is PydanticUndefined and field.default_factory is None:
        assert cell == "required", f"`{key}` has no default: its Default cell should say 'required'"
        return
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        default = default.model_dump()
    written = re.match(r"`([^`]*)`", cell)
    assert written, f"the Default cell of `{key}` should open with the default in backticks, got {cell!r}"
    documented = yaml.safe_load(written.group(1))
    assert _same(documented, default), f"`{key}`: docs say default {written.group(1)}, the code says {default!r}"


def test_no_row_documents_a_key_the_schema_lacks():
    stale = sorted(set(ROWS) - set(KEYS))
    assert not stale, f"docs/config.md documents keys the schema does not have: {stale}"


def test_the_search_distributions_are_documented():
    for kind in DISTRIBUTIONS:
        assert f"`{{{kind}: [" in DOC, f"docs/config.md does not show how to write a {kind} distribution"


@pytest.mark.parametrize("key,names", [("model.encoder", ENCODER_NAMES), ("alignment.detector", DETECTOR_NAMES)])
def test_every_registered_name_is_listed(key, names):
    # Not Literals (their validators name the nearest one): the row lists them, `_bn` VGGs as "their `_bn` versions".
    row = " | ".join(ROWS[key])
    missing = [name for name in names if f"`{name.removesuffix('_bn')}`" not in row]
    assert not missing, f"the row of `{key}` does not list {missing}"

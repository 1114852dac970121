"""Every experiment YAML we ship loads, validates and plans (DESIGN.md item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.plan import make_plan

SEARCH_SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
YAMLS = sorted(SEARCH_SPACES.rglob("*.yaml"))


def test_there_are_search_spaces():
    assert any(path.name == "quickstart.yaml" for path in YAMLS)


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(SEARCH_SPACES)) for p in YAMLS])
def test_every_yaml_plans(path):
    plan = make_plan(load_config(path))
    assert plan.n_trainings >= 1 and plan.n_evaluations >= plan.n_trainings


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(SEARCH_SPACES)) for p in YAMLS])
def test_every_yaml_opens_with_the_command_that_runs_it(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# orch ") and path.name in first


def test_quickstart_is_the_small_ablation_the_readme_promises():
    plan = make_plan(load_config(SEARCH_SPACES / "quickstart.yaml"))
    assert (plan.n_trainings, plan.n_evaluations) == (4, 12)

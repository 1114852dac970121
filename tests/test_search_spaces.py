"""Every experiment YAML we ship loads, validates and plans (docs/architecture.md, contract 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.experiment.loader import load_config
from orchestrator.experiment.plan import make_plan

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


def test_the_coursework_dry_run_says_36_trainings_and_144_evaluations():
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["run", str(SEARCH_SPACES / "coursework.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "36 trainings (36 grid cells); 144 evaluations (36 trainings x 4 decode variants)" in result.output

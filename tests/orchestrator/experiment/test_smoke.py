"""Smoke mode: every experiment file, its grid kept, shrunk to synthetic data on the CPU; and one
smoke run taken end to end: `orch run --smoke`, `orch report`, `orch export`, `orch caption`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.experiment.loader import load_config
from orchestrator.experiment.plan import make_plan
from orchestrator.experiment.smoke import SMOKE_PREPARED, load_smoke_config
from tests.orchestrator.conftest import REPO_ROOT

SEARCH_SPACES = REPO_ROOT / "search_spaces"
YAMLS = sorted(SEARCH_SPACES.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_file_keeps_its_grid_in_smoke_mode(path):
    full, smoke = load_config(path), load_smoke_config(path)
    full_plan, smoke_plan = make_plan(full), make_plan(smoke)
    assert smoke.ablation == full.ablation
    assert len(smoke_plan.cells) == len(full_plan.cells)
    assert len(smoke_plan.decode_variants) == len(full_plan.decode_variants)
    assert smoke.name == f"{full.name}-smoke" and smoke.tracking.experiment == f"{full.tracking.experiment}-smoke"
    assert (smoke.data.prepared, smoke.data.synthetic.n, smoke.data.image_size) == (SMOKE_PREPARED, 120, 32)
    assert (smoke.model.weights, smoke.train.epochs, smoke.train.device, smoke.resources.gpu) == ("none", 2, "cpu", 0)
    assert smoke.scheduler.grace_period <= smoke.scheduler.max_t == 2


def test_an_encoder_ablation_keeps_its_encoders_and_other_files_get_a_small_one():
    encoder = load_smoke_config(SEARCH_SPACES / "encoder.yaml")
    cells = make_plan(encoder).cells
    assert {encoder.trainer_config(cell.overrides).model.encoder for cell in cells} == {"resnet101", "vgg16"}
    assert load_smoke_config(SEARCH_SPACES / "decoder.yaml").model.encoder == "regnet_x_400mf"


def test_a_search_draws_two_samples_per_cell():
    assert load_smoke_config(SEARCH_SPACES / "hpo.yaml").search.num_samples == 2


def test_the_users_set_wins_over_the_smoke_profile():
    assert load_smoke_config(SEARCH_SPACES / "decoder.yaml", ["train.epochs=1"]).train.epochs == 1


def test_cli_dry_run_shows_the_smoke_plan(orch):
    result = orch("run", SEARCH_SPACES / "coursework.yaml", "--smoke", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Plan for 'coursework-smoke'" in result.output
    assert "36 trainings (36 grid cells); 144 evaluations" in result.output


@pytest.mark.integration
def test_a_smoke_run_goes_end_to_end_from_run_to_caption(local_ray, orch, tmp_path, monkeypatch):
    """length_penalty.yaml: 3 seeds x 4 β. METEOR is left out only to spare each trial a JVM start."""
    monkeypatch.chdir(tmp_path)
    result = orch("run", SEARCH_SPACES / "length_penalty.yaml", "--smoke", "--set", "eval.metrics=[Bleu,ROUGE_L,CIDEr]")
    assert result.exit_code == 0, result.output
    assert "3 trainings (3 grid cells); 12 evaluations" in result.output

    result = orch("report", "length_penalty-smoke", "--out", "report")
    assert result.exit_code == 0, result.output
    markdown = Path("report/report.md").read_text()
    assert "3 of 3 trainings finished; 12 evaluations; seeds (train.seed): 0, 1, 2" in markdown
    assert "(`decode.length_penalty`)" in markdown and "paired t-test over 3 pairs across 3 seeds" in markdown
    assert Path("report/factor_decode_length_penalty.png").is_file() and Path("report/learning_curves.png").is_file()

    result = orch("export", "length_penalty-smoke", "--out", "exports")
    assert result.exit_code == 0, result.output
    (folder,) = Path("exports").iterdir()
    assert json.loads((folder / "metrics.json").read_text())["experiment"] == "length_penalty-smoke"

    image = sorted(Path(SMOKE_PREPARED).parent.glob("*-source/images/*.png"))[0]
    result = orch("caption", image, "--model", folder)
    assert result.exit_code == 0, result.output
    path, caption = result.stdout.strip().split("\t")
    assert path == str(image) and caption

"""`orch export NAME --metric rsum` on an alignment experiment, then `orch align --model EXPORT_DIR`:
the export aligns exactly as its trial's checkpoint, and captions every region of an image.

One tiny alignment training recorded in MLflow the way the `orch run` driver records a trial
(TrialRecorder fed each epoch's result), without Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.commands.export import export_best
from orchestrator.experiment.keys import flatten
from orchestrator.experiment.plan import make_plan
from orchestrator.tracking.writer import Tracker
from orchestrator.tracking.recorder import TrialRecorder
from tests.conftest import tiny_trainer_dict
from tests.orchestrator.conftest import sqlite_uri
from orchestrator.storage import resolve
from trainers.alignment.aligner import Aligner
from trainers.training import run_training

NAME = "tiny-alignment-export"
SENTENCE = "a large red circle on the left and a small blue cross on the right"


def said(result) -> str:
    """What a command printed, on one line (rich wraps its messages at the terminal's width)."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def recorded(prepared_dir, tmp_path_factory) -> dict:
    storage = tmp_path_factory.mktemp("alignment-export") / "results"
    document = tiny_trainer_dict(prepared_dir, model={"decoder": "mrnn", "attention": "none"},
                                 train={"optimizer": "adam", "batch_size": 16})
    document.update(name=NAME, trainer="alignment", ray={"storage": str(storage)},
                    alignment={"word_dim": 8, "embed_dim": 16, "caption_epochs": 1}, eval={"sample_captions": 1})
    config = ExperimentConfig.model_validate(document)
    plan = make_plan(config)
    tracker = Tracker(sqlite_uri(storage), NAME, artifact_root=resolve(str(storage)))
    parent = tracker.parent_run(f"{NAME}/run-1", "orch run run-1")
    tracker.log_json(parent, plan.to_dict(), "config/plan.json")
    cell = plan.cells[0]
    trainer = config.trainer_config(cell.overrides)
    recorder = TrialRecorder(tracker, parent, f"{NAME}/run-1", "trial0", cell.id,
                             {**flatten(trainer.model_dump(mode="json")), "orch.cell": cell.id},
                             {d.id: d.params for d in plan.decode_variants})

    def on_epoch(result) -> None:
        recorder.record(result.as_report())
        if result.final:
            recorder.complete(result.as_report(), result.checkpoint)

    run_training(trainer, storage / NAME / "trial0", on_epoch=on_epoch)
    tracker.end(parent)
    return {"storage": storage, "uri": sqlite_uri(storage), "checkpoint": storage / NAME / "trial0" / "checkpoint"}


@pytest.fixture(scope="module")
def exported(recorded, tmp_path_factory) -> Path:
    [item] = export_best(NAME, recorded["uri"], tmp_path_factory.mktemp("exports"), "rsum")
    return item.folder


@pytest.fixture(scope="module")
def image(synth_dir) -> Path:
    return sorted((synth_dir / "images").glob("*.png"))[-1]


def test_the_best_alignment_trial_becomes_a_complete_folder(exported):
    assert {p.name for p in exported.iterdir()} == {"model.safetensors", "config.yaml", "vocab.json",
                                                    "metrics.json", "README.md"}
    metrics = json.loads((exported / "metrics.json").read_text())
    assert metrics["selected_by"] == "val_rsum" and metrics["trial"] == "trial0"
    assert {"i2t_R1", "t2i_medr", "chance_t2i_R1"} <= set(metrics["test"])
    card = (exported / "README.md").read_text()
    assert f"orch align --model {exported} photo.jpg" in card and "| test |" in card


def test_the_export_aligns_exactly_as_its_checkpoint(recorded, exported, image):
    from_export = Aligner.load(exported).align(image, SENTENCE, beta=0.5)
    from_checkpoint = Aligner.load(recorded["checkpoint"]).align(image, SENTENCE, beta=0.5)
    assert from_export.snippets == from_checkpoint.snippets
    assert " ".join(s.words for s in from_export.snippets) == SENTENCE


def test_orch_align_captions_every_region_of_an_export(exported, image, tmp_path):
    result = CliRunner().invoke(app, ["align", "--model", str(exported), str(image), "--caption-regions",
                                      "--plot", str(tmp_path / "regions.png")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.strip().splitlines() if not line.startswith("figure:")]
    assert len(lines) == 1 + 2 * 2  # the whole image and the 2x2 grid cells
    assert lines[0].startswith("whole image (0.00, 0.00, 1.00, 1.00)\t")
    assert all(line.split("\t")[1].strip() for line in lines)  # every region has a caption
    assert (tmp_path / "regions.png").stat().st_size > 0


def test_the_cli_says_how_to_export_and_use_an_alignment_experiment(recorded, exported, image, tmp_path):
    storage = str(recorded["storage"])
    by_cider = CliRunner().invoke(app, ["export", NAME, "--storage", storage, "--out", str(tmp_path / "out")])
    assert by_cider.exit_code == 2 and "--metric rsum" in said(by_cider)
    registered = CliRunner().invoke(app, ["export", NAME, "--storage", storage, "--metric", "rsum", "--register",
                                          "--out", str(tmp_path / "out")])
    assert registered.exit_code == 2 and "--register" in said(registered)
    assert not (tmp_path / "out").exists()
    nothing = CliRunner().invoke(app, ["align", "--model", str(exported), str(image)])
    assert nothing.exit_code == 2 and "--caption-regions" in said(nothing)

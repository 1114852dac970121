"""`orch train` and `orch run` on a `trainer: alignment` YAML, then `orch export` and `orch align` on what
they trained: as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import app
from trainers.alignment.aligner import export_aligner
from trainers.alignment.retrieval import chance_recall

pytestmark = pytest.mark.integration

TEST_IMAGES = 30  # of 300 synthetic images: 240 train, 30 val, 30 test, five captions each
RETRIEVAL_KEYS = [f"test_{d}_{m}" for d in ("i2t", "t2i") for m in ("R1", "R5", "R10", "medr")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One short training run on synthetic scenes; its `orch train --json` summary."""
    root = tmp_path_factory.mktemp("alignment")
    config = {
        "name": "tiny-alignment", "trainer": "alignment",
        "data": {"prepared": str(root / "data" / "prepared"), "synthetic": {"n": 300, "size": 32},
                 "image_size": 64, "num_workers": 0},
        "model": {"encoder": "vgg11", "weights": "none", "encoded_size": 2, "decoder": "mrnn",
                  "attention": "none", "embed_dim": 16, "hidden_dim": 32, "dropout": 0.0},
        "alignment": {"word_dim": 16, "embed_dim": 32, "caption_epochs": 1, "beta": 0.5},
        "train": {"epochs": 12, "batch_size": 40, "optimizer": "adam", "lr": 3.0e-3},
        "decode": {"beam_size": 2, "max_len": 12},
        "eval": {"sample_captions": 2},
        "ray": {"storage": str(root / "results")},
    }
    (root / "alignment.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(root / "alignment.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    return {"root": root, "summary": json.loads(result.stdout.strip().splitlines()[-1])}


def test_orch_train_ends_with_test_retrieval_well_above_chance(trained):
    summary = trained["summary"]
    assert set(RETRIEVAL_KEYS) <= set(summary)
    sentences = 5 * TEST_IMAGES
    chance = {f"{d}_R{k}": chance_recall(k, sentences, right=5) if d == "i2t" else chance_recall(k, TEST_IMAGES)
              for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert summary["test_rsum"] >= 2 * sum(chance.values())
    assert summary["test_t2i_R5"] >= 2 * chance["t2i_R5"]
    assert summary["test_t2i_medr"] < TEST_IMAGES / 2
    alignments = json.loads(Path(summary["predictions"]).read_text())
    assert len(alignments) == sentences
    first = alignments[0]
    assert " ".join(s["words"] for s in first["snippets"]) == first["sentence"]
    assert all(s["caption"] for s in first["snippets"])  # the region captioner describes every snippet's region


def test_the_run_is_tracked_like_any_trial(trained):
    root = trained["root"]
    client = MlflowClient(f"sqlite:///{root / 'results' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny-alignment").experiment_id])
    trial = next(run for run in runs if run.data.tags["orch.kind"] == "trial")
    variant = next(run for run in runs if run.data.tags["orch.kind"] == "variant")
    assert trial.data.params["trainer"] == "alignment"
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "val/i2t_R1")] == list(range(1, 13))
    assert {"val/rsum", "test_t2i_medr"} <= set(variant.data.metrics)


def test_orch_align_prints_each_snippet_with_its_region_and_draws_them(trained, tmp_path):
    root = trained["root"]
    checkpoint = Path(trained["summary"]["results"]) / "checkpoint"
    image = root / "data" / "prepared-source" / "images" / "synth_000280.png"
    sentence = "a large red circle on the left and a small blue cross on the right"
    result = CliRunner().invoke(app, ["align", "--model", str(checkpoint), str(image), sentence,
                                      "--beta", "0.5", "--plot", str(tmp_path / "figure.png")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert " ".join(line.split("\t")[0] for line in lines) == sentence
    assert all("region" in line or "whole image" in line for line in lines)
    assert (tmp_path / "figure.png").stat().st_size > 0

    word_by_word = CliRunner().invoke(app, ["align", "--model", str(checkpoint), str(image), sentence, "--beta", "0"])
    longest = CliRunner().invoke(app, ["align", "--model", str(checkpoint), str(image), sentence, "--beta", "1000"])
    assert len(word_by_word.stdout.strip().splitlines()) >= len(lines) >= len(longest.stdout.strip().splitlines()) == 1

    exported = export_aligner(checkpoint, tmp_path / "export")
    from_export = CliRunner().invoke(app, ["align", "--model", str(exported), str(image), sentence, "--beta", "0.5"])
    assert from_export.exit_code == 0, from_export.output
    assert from_export.stdout == result.stdout


def test_orch_align_refuses_what_is_not_an_alignment_model(trained, tmp_path):
    image = trained["root"] / "data" / "prepared-source" / "images" / "synth_000280.png"
    result = CliRunner().invoke(app, ["align", "--model", str(tmp_path), str(image), "a red circle"])
    assert result.exit_code == 2 and "not an orch model" in " ".join(result.output.split())  # wrapped at any width
    checkpoint = Path(trained["summary"]["results"]) / "checkpoint"
    missing = CliRunner().invoke(app, ["align", "--model", str(checkpoint), str(tmp_path / "nope.png"), "a circle"])
    assert missing.exit_code == 2 and "no such file" in " ".join(missing.output.split())


def test_orch_run_trains_it_as_a_ray_trial_that_exports_and_aligns(local_ray, tmp_path, monkeypatch):
    """search_spaces/alignment.yaml in smoke mode through Ray, then `orch export --metric rsum`, `orch align`."""
    from tests.orchestrator.conftest import REPO_ROOT, invoke_orch

    monkeypatch.chdir(tmp_path)
    result = invoke_orch("run", REPO_ROOT / "search_spaces" / "alignment.yaml", "--smoke")
    assert result.exit_code == 0, result.output
    assert "c001-d01" in result.output and "FINISHED" in result.output
    result = invoke_orch("export", "alignment-smoke", "--metric", "rsum", "--out", "exports")
    assert result.exit_code == 0, result.output
    (folder,) = Path("exports").iterdir()
    assert {"t2i_R1", "t2i_medr", "chance_t2i_R1"} <= set(json.loads((folder / "metrics.json").read_text())["test"])
    image = sorted(Path("data/smoke").glob("*-source/images/*.png"))[0]
    result = invoke_orch("align", "--model", folder, image, "a small red circle on the left")
    assert result.exit_code == 0, result.output
    assert " ".join(line.split("\t")[0] for line in result.stdout.strip().splitlines()) == \
        "a small red circle on the left"

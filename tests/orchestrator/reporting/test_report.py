"""`orch report`: tables over seeds, verdicts with corrected tests, plots and anchors, from a real MLflow store.

The store is written the way `orch run` writes it (Tracker, TrialRecorder, the plan of a real
config), with scores chosen so the answers are known: the encoder's effect is large and the same
in every seed, the decoder's is smaller than the seed-to-seed noise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.experiment.keys import flatten
from orchestrator.experiment.plan import make_plan
from orchestrator.reporting.report import sentence, write_report
from orchestrator.reporting.verdicts import Outcome, level_order, verdicts
from orchestrator.tracking.writer import Tracker
from orchestrator.tracking.recorder import TrialRecorder
from tests.orchestrator.conftest import sqlite_uri
from orchestrator.storage import resolve

GRID = {"model.encoder": ["resnet101", "vgg16"], "model.decoder": ["lstm", "gru"], "train.seed": [0, 1, 2],
        "decode.length_penalty": [0.0, 1.0]}
DECODER_NOISE = {0: 0.03, 1: -0.04, 2: 0.02}  # gru minus lstm, per seed: no consistent sign
SEED_OFFSET = {0: 0.0, 1: 0.02, 2: -0.01}


def coursework_cider(cell: dict) -> float:
    """Test CIDEr of a cell (0-1 scale): ResNet +0.10 (+0.005 per seed), GRU ± noise, β +0.01."""
    seed = cell["train.seed"]
    return (0.50 + (0.10 + 0.005 * seed) * (cell["model.encoder"] == "resnet101")
            + DECODER_NOISE[seed] * (cell["model.decoder"] == "gru") + 0.01 * cell["decode.length_penalty"]
            + SEED_OFFSET[seed])


def record_experiment(storage: Path, name: str, grid: dict, cider: Callable[[dict], float], epochs: int = 2,
                      prepared: str = "data/flickr8k/prepared", search: dict | None = None,
                      samples: tuple[dict, ...] = ({},)) -> str:
    """Write an invocation of `name` as `orch run` would: plan on the parent, trials, decode variants.
    With a search, each cell trains once per entry of `samples` (the values the search drew)."""
    config = ExperimentConfig.model_validate({"name": name, "data": {"prepared": prepared}, "ablation": grid,
                                              "search": search, "ray": {"storage": str(storage)}})
    plan = make_plan(config)
    uri = sqlite_uri(storage)
    tracker = Tracker(uri, name, artifact_root=resolve(str(storage)))
    run_key = f"{name}/run-1"
    parent = tracker.parent_run(run_key, "orch run run-1")
    tracker.log_json(parent, plan.to_dict(), "config/plan.json")
    variants = {d.id: d.params for d in plan.decode_variants}
    trials = [(cell, sample) for cell in plan.cells for sample in samples]
    for index, (cell, sample) in enumerate(trials):
        overrides = {**cell.overrides, **sample}
        params = {**flatten(config.trainer_config(overrides).model_dump(mode="json")), "orch.cell": cell.id}
        trial = f"trial{index:03d}" if search else cell.id  # a grid training's key is its cell, as in `orch run`
        recorder = TrialRecorder(tracker, parent, run_key, trial, cell.id, params, variants)
        for epoch in range(1, epochs + 1):
            report = {"epoch": epoch, "best_epoch": epoch, "train_loss": 3.0 / epoch}
            for variant in plan.decode_variants:
                value = cider({**overrides, **variant.overrides}) * epoch / epochs
                report.update({f"{variant.id}/val_CIDEr": value, f"{variant.id}/val_Bleu_4": value / 3})
                if epoch == epochs:
                    report.update(_test_scores(variant.id, value, variant.overrides.get("decode.length_penalty", 0.0)))
            report["val_CIDEr"] = max(v for k, v in report.items() if k.endswith("/val_CIDEr"))
            recorder.record(report)
        recorder.complete({**report, "final": True}, None)
    tracker.end(parent)
    return uri


def _test_scores(variant: str, cider: float, beta: float) -> dict:
    scores = {"CIDEr": cider, "Bleu_1": 0.6, "Bleu_2": 0.4, "Bleu_3": 0.3, "Bleu_4": cider / 3, "METEOR": 0.19,
              "ROUGE_L": 0.45, "mean_caption_length": 9.0 + 2.0 * beta}
    return {f"{variant}/test_{metric}": value for metric, value in scores.items()}


@pytest.fixture(scope="module")
def coursework_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    uri = record_experiment(root / "results", "cw", GRID, coursework_cider)
    return write_report("cw", uri, root / "report")


def _sentence(markdown: str, key: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith("- **") and f"(`{key}`)" in line)


def test_every_cell_is_summarised_over_its_three_seeds_on_the_raw_scale(coursework_report):
    data = json.loads((coursework_report.parent / "report.json").read_text())
    assert len(data["cells"]) == 8  # 2 encoders x 2 decoders x 2 β; seeds are averaged
    cell = next(c for c in data["cells"] if c["levels"] == {
        "model.encoder": "vgg16", "model.decoder": "lstm", "decode.length_penalty": "0.0"})
    cider = cell["metrics"]["CIDEr"]
    assert cider["seeds"] == 3
    assert cider["mean"] == pytest.approx(0.50 + (0.0 + 0.02 - 0.01) / 3)
    assert cider["std"] == pytest.approx(0.015275, abs=1e-5)
    assert cider["ci95"] == pytest.approx(4.303 * 0.015275 / 3 ** 0.5, abs=1e-4)  # t(2) at 95 %
    markdown = coursework_report.read_text()
    assert "| vgg16 | lstm | 0.0 | 3 | 0.600 ± 0.000 |" in markdown
    assert "| 0.503 ± 0.038 | 9.0 ± 0.0 |" in markdown  # CIDEr, then length in words
    assert "CIDEr in 0–10" in markdown and "95 % confidence interval" in markdown


def test_a_large_consistent_effect_exceeds_seed_noise_and_a_noisy_one_does_not(coursework_report):
    markdown = coursework_report.read_text()
    encoder = _sentence(markdown, "model.encoder")
    decoder = _sentence(markdown, "model.decoder")
    assert "resnet101 gives the best mean CIDEr (0.615), 0.105 above vgg16 (exceeds seed noise" in encoder
    assert "0.003 above lstm (within seed noise" in decoder
    # pairs: 3 seeds x the other training factor's 2 levels; the β variants share their training's pair
    assert re.search(r"paired t-test over 6 pairs across 3 seeds, d_z = 0\.\d\d, Holm p = 0\.\d{3}\)", decoder)
    assert "Holm-corrected over the 3 comparisons" in markdown
    verdicts = json.loads((coursework_report.parent / "report.json").read_text())["verdicts"]
    (encoder_vs,) = verdicts["model.encoder"]["comparisons"]
    (decoder_vs,) = verdicts["model.decoder"]["comparisons"]
    assert encoder_vs["exceeds_seed_noise"] is True and decoder_vs["exceeds_seed_noise"] is False
    # Holm: β's gap is exact (p = 0), the encoder's p is the second smallest of 3 (x2), the decoder's the largest (x1)
    assert encoder_vs["p_holm"] == pytest.approx(2 * encoder_vs["p"]) and decoder_vs["p_holm"] == decoder_vs["p"]


def test_the_report_has_the_encoder_by_decoder_table_and_one_table_per_factor(coursework_report):
    markdown = coursework_report.read_text()
    assert "## encoder × decoder (averaged over the other factors)" in markdown
    for key in GRID:
        if key != "train.seed":
            assert f"(`{key}`), averaged over the other factors" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| encoder | decoder | seeds"))
    assert header.split(" | ")[3:] == ["BLEU-1 (0–1)", "BLEU-2 (0–1)", "BLEU-3 (0–1)", "BLEU-4 (0–1)",
                                       "METEOR (0–1)", "ROUGE-L (0–1)", "CIDEr (0–10)", "length (words) |"]


def test_the_report_is_logged_to_the_parent_run_so_the_mlflow_ui_holds_it(coursework_report):
    from mlflow import MlflowClient

    uri = sqlite_uri(coursework_report.parents[1] / "results")
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("cw").experiment_id], "tags.`orch.kind` = 'parent'")
    logged = {Path(item.path).name for item in client.list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report.md", "report.json", "learning_curves.png", "factor_model_encoder.png",
                      "factor_model_decoder.png", "factor_decode_length_penalty.png"}


def test_flickr8k_results_sit_beside_the_published_anchors_on_the_same_scale(coursework_report):
    markdown = coursework_report.read_text()
    assert "## Published anchors (flickr8k)" in markdown
    assert ("| Show, Attend and Tell, soft attention (Xu et al. 2015) | 0.670 | 0.448 | 0.299 | 0.195 | 0.189 |"
            in markdown)


def _assert_plots(report: Path, names: tuple[str, ...]) -> None:
    markdown = report.read_text()
    for name in names:
        assert f"]({name})" in markdown
        with Image.open(report.parent / name) as image:
            assert image.width >= 500 and image.height >= 300


def test_every_factor_has_its_plot_and_the_learning_curves_are_written(coursework_report):
    _assert_plots(coursework_report, ("factor_model_encoder.png", "factor_model_decoder.png",
                                      "factor_decode_length_penalty.png", "learning_curves.png"))


def test_with_one_seed_the_report_says_noise_cannot_be_told_and_plots_every_factor(tmp_path):
    grid = {"model.decoder": ["lstm", "gru"], "train.scheduled_sampling.max_rate": [0.0, 0.25]}
    uri = record_experiment(tmp_path / "results", "one-seed", grid, lambda cell: 0.5 + 0.1 * (cell["model.decoder"] == "gru"),
                            epochs=1, prepared="data/synthetic")
    report = write_report("one-seed", uri, tmp_path / "report")
    markdown = report.read_text()
    decoder = _sentence(markdown, "model.decoder")
    assert "gru gives the best mean CIDEr (0.600), 0.100 above lstm. One seed: whether this exceeds" in decoder
    assert "Holm" not in markdown and "Published anchors" not in markdown
    _assert_plots(report, ("factor_model_decoder.png", "factor_train_scheduled_sampling_max_rate.png"))


def test_a_factor_with_several_levels_compares_its_best_with_each_and_corrects_for_every_test(tmp_path):
    grid = {"model.attention": ["soft", "dot"], "decode.length_penalty": [0.0, 0.5, 1.5], "train.seed": [0, 1, 2]}
    jitter = {0: 0.004, 1: -0.003, 2: -0.001}
    uri = record_experiment(tmp_path / "results", "levels", grid, lambda cell: (
        0.5 + 0.05 * cell["decode.length_penalty"] - 0.06 * (cell["decode.length_penalty"] == 1.5)
        + jitter[cell["train.seed"]] * (cell["decode.length_penalty"] != 0.5)), epochs=1)
    markdown = write_report("levels", uri, tmp_path / "report").read_text()
    beta = _sentence(markdown, "decode.length_penalty")
    assert beta.index("above 1.5") < beta.index("above 0.0")  # the nearest rival first
    assert "0.025 above 0.0 (exceeds seed noise" in beta
    data = json.loads((tmp_path / "report" / "report.json").read_text())["verdicts"]
    tests = [c for v in data.values() for c in v["comparisons"]]
    assert len(tests) == 3  # attention 1 + β 2, all in one Holm family
    smallest = min(tests, key=lambda c: c["p"])
    assert smallest["p_holm"] == pytest.approx(min(1.0, 3 * smallest["p"]))


def test_a_search_lists_its_best_samples_first_with_their_importance_and_parallel_coordinates(tmp_path):
    search = {"num_samples": 4, "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-2]},
                                          "model.attention_dim": {"choice": [256, 512]}}}
    samples = ({"train.lr": 0.000123456, "model.attention_dim": 256}, {"train.lr": 0.002, "model.attention_dim": 256},
               {"train.lr": 0.0004, "model.attention_dim": 512}, {"train.lr": 0.001, "model.attention_dim": 512})
    uri = record_experiment(tmp_path / "results", "hpo", {}, lambda cell: 0.3 + 100 * cell["train.lr"], epochs=1,
                            search=search, samples=samples)
    report = write_report("hpo", uri, tmp_path / "report")
    markdown = report.read_text()
    section = markdown.split("## Best search samples first (by val CIDEr at their best epoch)")[1].strip().splitlines()
    assert section[0] == ("| trial | lr | attention_dim | val CIDEr (0–10) | test CIDEr (0–10) | test BLEU-4 (0–1) "
                          "| best epoch |")
    assert [row.split(" | ")[1] for row in section[2:6]] == ["0.002", "0.001", "0.0004", "0.0001235"]
    assert section[2].split(" | ")[3] == "0.500"  # 0.3 + 100 * 0.002, raw
    importance = markdown.split("Parameter importance for val CIDEr")[1].split("\n\n")[1].splitlines()
    assert importance[2].startswith("| `train.lr` |")  # CIDEr follows the learning rate alone
    assert sum(float(row.split(" | ")[1].rstrip(" |")) for row in importance[2:]) == pytest.approx(1.0, abs=0.011)
    assert "4 trainings are few for fANOVA's random forest: read these as a hint." in markdown
    _assert_plots(report, ("search_parallel_coordinates.png",))


def test_a_gap_that_too_few_seeds_evaluated_on_both_sides_is_left_untested():
    outcomes = [Outcome({"model.decoder": "lstm"}, seed, {"CIDEr": 0.5 + 0.01 * int(seed)}) for seed in "012"]
    outcomes.append(Outcome({"model.decoder": "gru"}, "0", {"CIDEr": 0.6}))  # its other seeds failed
    (decoder,) = verdicts(outcomes, ["model.decoder"], "CIDEr")
    assert sentence(decoder).endswith("gru gives the best mean CIDEr (0.600), 0.090 above lstm "
                                       "(untested: 1 seed evaluated both).")


def test_levels_are_ordered_as_numbers_when_they_are_numbers():
    assert level_order(["0.25", "0.0", "0.1", "0.0"]) == ["0.0", "0.1", "0.25"]
    assert level_order(["vgg16", "resnet101", "vgg16"]) == ["vgg16", "resnet101"]


def test_cli_report_names_what_is_missing(orch, tmp_path):
    record_experiment(tmp_path / "results", "tiny-grid", {"model.decoder": ["lstm"]}, lambda cell: 0.4, epochs=1)
    result = orch("report", "nope", "--storage", tmp_path / "results", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "no experiment named 'nope'" in result.output and "tiny-grid" in result.output
    result = orch("report", "tiny-grid", "--storage", tmp_path / "results", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.md").is_file()
    result = orch("report", "tiny-grid", "--storage", tmp_path / "missing")
    assert result.exit_code == 2 and "no MLflow store" in result.output


def test_cells_whose_captions_stop_at_max_len_are_named(tmp_path):
    uri = record_experiment(tmp_path / "results", "cut", {"decode.length_penalty": [0.0, 1.0]}, lambda cell: 0.5)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cut").experiment_id], "tags.`orch.variant` = 'd02'")
    client.log_metric(runs[0].info.run_id, "test_truncated_fraction", 0.3)
    markdown = write_report("cut", uri, tmp_path / "report").read_text()
    section = markdown.split("## Captions cut at decode.max_len", 1)[1]
    assert "c001-d02: 30% of test captions cut at decode.max_len" in section
    assert "c001-d01" not in section

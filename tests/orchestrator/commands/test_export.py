"""`orch export`, `orch evaluate`, `orch caption`: the best trials become model folders that caption
images exactly as their trials did.

The store is real and so are the checkpoints: two tiny trainings (seeds 0 and 1), each decoded
with β 0 and 1, recorded in MLflow the way the `orch run` driver records them (TrialRecorder fed
each epoch's result and its cost meter's fields), without Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.tracking.cost import TrialMeter, log_totals
from orchestrator.experiment.keys import flatten
from orchestrator.experiment.plan import make_plan
from orchestrator.tracking.provenance import describe_experiment, prepared_dataset, standard_tags
from orchestrator.tracking.writer import Tracker
from orchestrator.tracking.recorder import TrialRecorder
from tests.conftest import tiny_trainer_dict
from tests.orchestrator.conftest import REPO_ROOT, invoke_orch, python_without_orch, sqlite_uri
from orchestrator.storage import resolve
from trainers.config import DecodeConfig
from trainers.evaluation import DecodeVariant
from trainers.inference import caption_images, evaluate_split, load_model
from trainers.training import run_training

EXPORT_FILES = {"model.safetensors", "config.yaml", "vocab.json", "metrics.json", "README.md"}


@dataclass
class Recorded:
    storage: Path
    uri: str
    run_dirs: dict[str, Path]  # trial id -> its training folder (checkpoint/ inside)


def train_and_record(storage: Path, name: str, prepared: Path) -> Recorded:
    config = ExperimentConfig.model_validate({
        **tiny_trainer_dict(prepared), "name": name, "ray": {"storage": str(storage)},
        "ablation": {"train.seed": [0, 1], "decode.length_penalty": [0.0, 1.0]}})
    plan = make_plan(config)
    tracker = Tracker(sqlite_uri(storage), name, artifact_root=resolve(str(storage)))
    tracker.run_tags = standard_tags(f"orch run {name}")
    run_key = f"{name}/run-1"
    parent = tracker.parent_run(run_key, "orch run run-1")
    tracker.log_json(parent, plan.to_dict(), "config/plan.json")
    describe_experiment(tracker, name, config.trainer, config.eval.select_by)
    run_dirs = {}
    for index, cell in enumerate(plan.cells):
        trial = cell.id  # a grid trial's key is its cell, as in `orch run`
        trainer = config.trainer_config(cell.overrides)
        variants = [DecodeVariant(d.id, DecodeConfig(**{k.split(".", 1)[1]: v for k, v in d.params.items()}))
                    for d in plan.decode_variants]
        recorder = TrialRecorder(tracker, parent, run_key, trial, cell.id,
                                 {**flatten(trainer.model_dump(mode="json")), "orch.cell": cell.id},
                                 {d.id: d.params for d in plan.decode_variants}, reference=plan.reference_variant,
                                 dataset=prepared_dataset(prepared))
        meter = TrialMeter(gpus=0.0, cpus=1.0)

        def on_epoch(result, recorder=recorder, meter=meter) -> None:
            report = {**result.as_report(), **meter.fields(result.metrics)}
            recorder.record(report)
            if result.final:
                recorder.complete(report, result.checkpoint)

        run_dirs[trial] = storage / name / trial
        run_training(trainer, run_dirs[trial], variants=variants, on_epoch=on_epoch)
        meter.close()
    log_totals(tracker, parent, run_key)
    tracker.end(parent)
    return Recorded(storage, sqlite_uri(storage), run_dirs)


@pytest.fixture(scope="session")  # test_mlflow_conventions.py reads the same store
def recorded(prepared_dir, tmp_path_factory) -> Recorded:
    return train_and_record(tmp_path_factory.mktemp("export") / "results", "tiny-grid", prepared_dir)


@pytest.fixture(scope="module")
def exported(recorded, tmp_path_factory) -> list[Path]:
    """`orch export tiny-grid --top-k 2`: the two trials' folders, best first."""
    from orchestrator.commands.export import export_best

    out = tmp_path_factory.mktemp("exports")
    return [item.folder for item in export_best("tiny-grid", recorded.uri, out, "CIDEr", top_k=2)]


@pytest.fixture(scope="module")
def images(synth_dir) -> list[Path]:
    return sorted((synth_dir / "images").glob("*.png"))[:4]


def test_the_best_trials_become_complete_folders_best_first(exported, recorded):
    assert len(exported) == 2 and all({p.name for p in folder.iterdir()} == EXPORT_FILES for folder in exported)
    first, second = (json.loads((folder / "metrics.json").read_text()) for folder in exported)
    assert first["selection_score"] >= second["selection_score"] and first["trial"] != second["trial"]
    assert first["rank"] == 1 and first["selected_by"] == "val_CIDEr"
    assert [folder.name for folder in exported] == [f"top1-{first['id']}", f"top2-{second['id']}"]
    assert first["id"] == f"{first['cell']}-{first['variant']}"  # c001-d02: as `orch status` and MLflow say
    assert {"Bleu_4", "CIDEr", "mean_caption_length"} <= set(first["test"])


def test_each_trial_is_exported_with_its_best_decode_variant_at_its_best_epoch(exported, recorded):
    client = MlflowClient(recorded.uri)
    for folder in exported:
        metrics = json.loads((folder / "metrics.json").read_text())
        trial_run = client.get_run(metrics["trial_run_id"])
        siblings = client.search_runs([trial_run.info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{trial_run.info.run_id}'")
        # Every variant decodes the checkpoint of the trial's best epoch: its val score is that checkpoint's.
        at_best = {run.data.tags["orch.variant"]: run.data.metrics["val/CIDEr"] for run in siblings}
        assert all(client.get_metric_history(run.info.run_id, "val/CIDEr")[-1].step == trial_run.data.metrics["epoch"]
                   for run in siblings)
        assert metrics["selection_score"] == max(at_best.values()) == at_best[metrics["variant"]]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        chosen = next(run for run in siblings if run.data.tags["orch.variant"] == metrics["variant"])
        assert str(config["decode"]["length_penalty"]) == chosen.data.params["decode.length_penalty"]


def test_an_export_captions_exactly_as_its_trials_checkpoint(exported, recorded, prepared_dir, images, tmp_path):
    folder = exported[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    export = load_model(folder)
    checkpoint = load_model(recorded.run_dirs[metrics["trial"]] / "checkpoint")
    decode = export.config.decode
    assert [r.caption for r in caption_images(export, images, decode)] == \
        [r.caption for r in caption_images(checkpoint, images, decode)]
    _, captions = evaluate_split(export, prepared_dir, "test", metrics=["Bleu"])
    logged = MlflowClient(recorded.uri).download_artifacts(metrics["variant_run_id"],
                                                           f"predictions/test_{metrics['variant']}.json", str(tmp_path))
    assert captions == [row["caption"] for row in json.loads(Path(logged).read_text())]


def test_the_model_card_says_what_it_is_and_how_to_caption(exported):
    card = (exported[0] / "README.md").read_text()
    metrics = json.loads((exported[0] / "metrics.json").read_text())
    assert f"# Captioner: tiny-grid, {metrics['id']}" in card and "regnet_x_400mf" not in card and "resnet18" in card
    assert f"orch caption photo.jpg --model {exported[0]}" in card
    assert f"| test | {metrics['test']['Bleu_1']:.3f} | " in card and "scores: pycocoevalcap scale" in card


def test_cli_export_refuses_an_experiment_without_a_finished_trial(orch, tmp_path):
    tracker = Tracker(sqlite_uri(tmp_path), "broken", artifact_root=resolve(str(tmp_path)))
    parent = tracker.parent_run("broken/run-1", "orch run run-1")
    TrialRecorder(tracker, parent, "broken/run-1", "trial0", "c001", {"train.seed": 0}, {"d01": {}}).end(
        "FAILED", "RuntimeError: out of memory")
    tracker.end(parent, "FAILED")
    result = orch("export", "broken", "--storage", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "no finished trial to export" in result.output and "FAILED" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_export_refuses_a_metric_it_cannot_rank_by(orch, recorded, tmp_path):
    result = orch("export", "tiny-grid", "--storage", recorded.storage, "--metric", "BLEU", "--out", tmp_path)
    assert result.exit_code == 2 and "CIDEr" in result.output


def test_cli_evaluate_prints_the_metrics_as_json(orch, exported, prepared_dir, monkeypatch):
    monkeypatch.setenv("ORCH_NO_JAVA", "1")  # METEOR's JVM takes half a minute to start on a busy machine
    result = orch("evaluate", "--model", exported[0], "--prepared", prepared_dir, "--split", "val",
                  "--beam-size", "1", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "mean_caption_length"} <= set(scores)


def test_cli_caption_names_a_broken_image_and_captions_the_others(orch, exported, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    result = orch("caption", images[0], broken, images[1], "--model", exported[0],
                  "--attention-plot", tmp_path / "plots")
    assert result.exit_code == 2
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert [line.split("\t")[0] for line in lines] == [str(images[0]), str(images[1])]
    assert all(line.split("\t")[1] for line in lines)
    assert f"{broken}: cannot read the image" in result.output
    plots = [tmp_path / "plots" / f"{image.stem}.png" for image in images[:2]]
    assert sorted((tmp_path / "plots").iterdir()) == sorted(plots)
    assert all(f"attention: {plot}" in result.output for plot in plots)  # it says where each went


def test_cli_caption_refuses_one_png_for_several_images(orch, exported, images, tmp_path):
    result = orch("caption", images[0], images[1], "--model", exported[0], "--attention-plot", tmp_path / "a.png")
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: --attention-plot {tmp_path / 'a.png'}: 2 images draw 2 plots (name a folder, e.g. --attention-plot "
        f"{tmp_path / 'a'}/: one IMAGE_NAME.png each)"]
    assert list(tmp_path.iterdir()) == []


def test_register_logs_a_pyfunc_model_that_captions_a_batch(recorded, exported, images, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    from orchestrator.commands.export import pick_best, register_export
    from orchestrator.tracking.reader import open_results

    results = open_results("tiny-grid", recorded.uri)
    version = register_export(results, pick_best(results, "CIDEr")[0], exported[0])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", recorded.uri)
    model = mlflow.pyfunc.load_model(f"models:/tiny-grid/{version}")
    chosen = load_model(exported[0]).config.decode  # the decode variant that ranked it: its β as a param
    params = {"length_penalty": chosen.length_penalty}
    predicted = model.predict(pd.DataFrame({"image": [str(p) for p in images[:2]] + ["missing.png"]}), params=params)
    expected = [r.caption for r in caption_images(load_model(exported[0]), images[:2])]
    assert list(predicted["caption"][:2]) == expected and predicted["error"][2] == "no such file"
    wider = model.predict(pd.DataFrame({"image": [str(images[0])]}), params={**params, "beam_size": 1})
    assert wider["caption"][0] == caption_images(load_model(exported[0]), images[:1],
                                                 chosen.model_copy(update={"beam_size": 1}))[0].caption


def _bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_register_makes_no_run_and_no_copy_and_links_version_run_and_model(recorded, tmp_path):
    """A version is the training's logged model itself: registering adds no run and no byte of artifacts;
    the version names the trial run and the model, and the model lists the version."""
    client = MlflowClient(recorded.uri)
    experiment = client.get_experiment_by_name("tiny-grid").experiment_id
    runs = {run.info.run_id for run in client.search_runs([experiment], max_results=100)}
    stored = _bytes_under(recorded.storage / "mlartifacts")
    result = invoke_orch("export", "tiny-grid", "--storage", recorded.storage, "--out", tmp_path, "--register")
    assert result.exit_code == 0, result.output
    assert {run.info.run_id for run in client.search_runs([experiment], max_results=100)} == runs
    assert _bytes_under(recorded.storage / "mlartifacts") == stored
    champion = client.get_model_version_by_alias("tiny-grid", "champion")
    model = client.get_logged_model(champion.source.removeprefix("models:/"))  # MLflow 3.17 keeps no model_id field
    trial = client.get_run(champion.run_id)
    assert model.source_run_id == trial.info.run_id and trial.data.tags["orch.kind"] == "trial"
    assert model.name == champion.tags["cell"] and not Path("mlflow.db").exists()  # no default store was opened
    assert {"name": "tiny-grid", "version": str(champion.version)} in [
        {"name": item["name"], "version": str(item["version"])} for item in json.loads(model.tags["mlflow.modelVersions"])]


def test_the_champion_loads_and_captions_where_orch_cannot_be_imported(recorded, images, tmp_path):
    """What a user does in a virtualenv with the model's requirements and no orch: load the champion from
    the registry and caption an image; the model's own copy of `trainers` is what it imports."""
    result = invoke_orch("export", "tiny-grid", "--storage", recorded.storage, "--out", tmp_path / "out", "--register")
    assert result.exit_code == 0, result.output
    shown = python_without_orch(f"""
import json
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model("models:/tiny-grid@champion")
captions = model.predict(pd.DataFrame({{"image": [{str(images[0])!r}, "missing.png"]}}))
print(json.dumps({{"captions": list(captions["caption"]), "errors": list(captions["error"]),
                  "trainers": sys.modules["trainers"].__file__, "orch": "orchestrator" in sys.modules}}))
""", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": recorded.uri})
    assert shown.returncode == 0, shown.stderr[-3000:]
    answer = json.loads(shown.stdout.strip().splitlines()[-1])
    assert answer["captions"][0] and answer["errors"] == ["", "no such file"] and not answer["orch"]
    assert "/code/trainers/" in answer["trainers"] and not answer["trainers"].startswith(str(REPO_ROOT))

"""Bad files and bad input get one line, `error: <file or key>: <what> (<what to do>)`, exit code 2,
no traceback and nothing left behind: every command, with a corrupt file of each kind it reads.

Real files throughout: a tiny export and checkpoint written as orch writes them, then damaged the
ways a shared disk damages them (cut short, a YAML tag, a pickle where a state dict belongs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.orchestrator.conftest import TINY_EXPERIMENT, plant_pickle, write_yaml
from orchestrator.storage import resolve


def one_error_line(result, *fragments: str) -> str:
    """The command exited 2 with one `error:` line, its last, naming each fragment, and no traceback
    (`orch run` prints its plan before the checks that need the plan)."""
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert output.count("error: ") == 1, result.output
    said = output[output.index("error: "):]
    assert result.output.rstrip().splitlines()[-1].split()[-1] == said.split()[-1], result.output  # the last line
    assert output.startswith("error: ") or result.output.lstrip().startswith("Plan for "), result.output
    for fragment in fragments:
        assert fragment in said, (fragment, result.output)
    return said


@pytest.fixture(scope="module")
def export_dir(tiny_prepared, tmp_path_factory) -> Path:
    """A whole export folder (model.safetensors, config.yaml, vocab.json) of a tiny untrained captioner."""
    from safetensors.torch import save_file

    from trainers.config import TrainerConfig
    from trainers.data.prepared import PreparedDataset
    from trainers.models import build_captioner

    trainer_keys = {k: v for k, v in TINY_EXPERIMENT.items() if k not in ("resources", "ray")}
    config = TrainerConfig.model_validate({**trainer_keys, "data": {**TINY_EXPERIMENT["data"],
                                                                    "prepared": str(tiny_prepared)}})
    vocab = PreparedDataset(tiny_prepared).vocab
    captioner = build_captioner(config.model, len(vocab))
    folder = tmp_path_factory.mktemp("export") / "model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in captioner.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    (folder / "vocab.json").write_text(json.dumps(vocab.to_dict()))
    return folder


@pytest.fixture
def image(tiny_prepared) -> Path:
    """An image of the synthetic source the tiny dataset was prepared from."""
    found = sorted((tiny_prepared.parent / "source").rglob("*.png"))
    return found[0]


def damaged(export_dir: Path, tmp_path: Path, name: str, how: str, marker: Path | None = None) -> Path:
    """A copy of the export with one file damaged: `cut` (half of it), `tag` (a YAML tag), `pickle`."""
    folder = tmp_path / f"{name}-{how}"
    shutil.copytree(export_dir, folder)
    target = folder / name
    if how == "cut":
        data = target.read_bytes()
        target.write_bytes(data[:len(data) // 2])
    elif how == "tag":
        target.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    elif how == "pickle":
        plant_pickle(target, marker)
    return folder


def test_the_undamaged_export_captions(orch, export_dir, image):
    result = orch("caption", image, "--model", export_dir)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["caption", "evaluate", "align"])
@pytest.mark.parametrize("name, how, said", [
    ("model.safetensors", "cut", "not a whole safetensors file"),
    ("vocab.json", "cut", "not valid JSON"),
    ("config.yaml", "tag", "a YAML tag orch does not construct"),
])
def test_a_damaged_export_is_named_in_one_line(orch, export_dir, tiny_prepared, image, tmp_path, command, name, how,
                                              said):
    folder = damaged(export_dir, tmp_path, name, how, marker=tmp_path / "yaml-tag-ran")
    args = {"caption": ["caption", image, "--model", folder],
            "evaluate": ["evaluate", "--model", folder, "--prepared", tiny_prepared],
            "align": ["align", image, "a sentence", "--model", folder]}[command]
    one_error_line(orch(*args), f"{folder / name}: {said}")
    assert not (tmp_path / "yaml-tag-ran").exists()


@pytest.mark.parametrize("command", ["caption", "evaluate"])
def test_a_checkpoint_that_is_a_pickle_is_refused_without_running_it(orch, export_dir, tiny_prepared, image, tmp_path,
                                                                     command):
    """A checkpoint folder whose best_model.pt is a crafted pickle: refused, its payload never runs."""
    from trainers.inference import read_saved_model

    _, vocab, _ = read_saved_model(export_dir)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    marker = tmp_path / "unpickled"
    config = yaml.safe_load((export_dir / "config.yaml").read_text())
    (folder / "meta.json").write_text(json.dumps({"epoch": 1, "config": config, "vocab": vocab.itos}))
    plant_pickle(folder / "best_model.pt", marker)
    args = {"caption": ["caption", image, "--model", folder],
            "evaluate": ["evaluate", "--model", folder, "--prepared", tiny_prepared]}[command]
    one_error_line(orch(*args), f"{folder / 'best_model.pt'}: a pickle holding more than tensors", "refused")
    assert not marker.exists()


def test_a_truncated_vocab_in_a_prepared_dataset_is_named(orch, export_dir, tiny_prepared, tmp_path):
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    data = (prepared / "vocab.json").read_bytes()
    (prepared / "vocab.json").write_bytes(data[:len(data) // 2])
    one_error_line(orch("evaluate", "--model", export_dir, "--prepared", prepared), f"{prepared / 'vocab.json'}")


# ------------------------------------------------------------------------------------ orch prepare
def karpathy(tmp_path: Path, entries: list[dict]) -> Path:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    from PIL import Image

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), (200, 10, 10)).save(images / name)
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "t", "images": entries}))
    return path


def entry(filename: str, split: str, imgid: int, **extra) -> dict:
    return {"filename": filename, "split": split, "imgid": imgid, "sentences": [{"raw": "a red square"}], **extra}


@pytest.mark.parametrize("filename, filepath", [("../x.png", None), ("/etc/hostname", None), ("x.png", "../.."),
                                                ("a.png", "/tmp")])
def test_an_image_path_outside_images_is_refused(orch, tmp_path, filename, filepath):
    extra = {"filepath": filepath} if filepath is not None else {}
    source = karpathy(tmp_path, [entry("a.png", "train", 1), entry(filename, "test", 2, **extra)])
    out = tmp_path / "out"
    one_error_line(orch("prepare", source, "--images", tmp_path / "images", "--out", out),
                   f"{source}: images[1] names", "outside the --images folder")
    assert not out.exists()


def test_one_image_in_two_splits_is_refused_unless_meant(orch, tmp_path):
    source = karpathy(tmp_path, [entry("a.png", "train", 1), entry("b.png", "train", 2), entry("./a.png", "test", 7)])
    out = tmp_path / "out"
    one_error_line(orch("prepare", source, "--images", tmp_path / "images", "--out", out, "--min-word-freq", "1"),
                   "images[0] (id 1, train) and images[2] (id 7, test) are both a.png", "--allow-shared-images")
    assert not out.exists()
    meant = orch("prepare", source, "--images", tmp_path / "images", "--out", out, "--min-word-freq", "1",
                 "--allow-shared-images")
    assert meant.exit_code == 0, meant.output


def test_prepare_into_a_folder_it_cannot_write(orch, tmp_path):
    source = karpathy(tmp_path, [entry("a.png", "train", 1), entry("b.png", "test", 2)])
    result = orch("prepare", source, "--images", tmp_path / "images", "--out", "/sys/orch-prepared")
    one_error_line(result, "--out /sys/orch-prepared: cannot write into /sys", "choose a folder this user can write")


# ------------------------------------------------------------------------------- experiment files
def test_an_empty_experiment_file_is_refused(orch, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    for command in ("run", "train"):
        one_error_line(orch(command, path), f"{path}: the experiment file is empty")


@pytest.mark.parametrize("uri", ["localhost:5000", "mlflow.db", "my store", "http://"])
def test_a_tracking_uri_that_is_not_a_uri(orch, tmp_path, uri):
    path = write_yaml(tmp_path / "t.yaml", {"name": "t", "tracking": {"uri": uri}})
    one_error_line(orch("run", path, "--dry-run"), "tracking.uri", "is not a tracking URI")


def test_run_refuses_a_missing_prepared_folder_of_any_cell_before_ray_starts(orch, tiny_prepared, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere"
    path = write_yaml(tmp_path / "t.yaml", {**TINY_EXPERIMENT, "name": "t", "data": {"prepared": str(tiny_prepared)},
                                            "ray": {"storage": str(tmp_path / "results")},
                                            "ablation": {"data.prepared": [str(tiny_prepared), str(missing)]}})
    import ray

    started = ray.is_initialized()
    one_error_line(orch("run", path), "data.prepared (cell c002)", f"{missing} does not exist")
    assert ray.is_initialized() == started
    assert not (tmp_path / "results").exists()


def test_train_with_a_missing_prepared_folder_leaves_nothing(orch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "t.yaml", {"name": "t", "data": {"prepared": str(tmp_path / "nowhere")},
                                            "ray": {"storage": str(tmp_path / "results")}})
    one_error_line(orch("train", path), "data.prepared", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_resume_of_a_folder_with_a_bad_orch_yaml(orch, tmp_path):
    folder = tmp_path / "results" / "x" / "run-20250101-000000"
    folder.mkdir(parents=True)
    marker = tmp_path / "yaml-tag-ran"
    (folder / "orch.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    result = orch("resume", folder)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_score_with_a_truncated_predictions_file(orch, tmp_path):
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "id": 1, "caption": "a b"}]}))
    preds = tmp_path / "preds.json"
    preds.write_text('[{"image_id": 1, "caption": "a')
    one_error_line(orch("score", "--references", refs, "--predictions", preds), str(preds))


def test_export_of_a_trial_whose_mlflow_checkpoint_is_a_pickle(orch, export_dir, tmp_path, monkeypatch):
    """A trial's logged model in MLflow (a shared store) whose best_model.pt was replaced by a crafted pickle:
    `orch export` refuses it in one line and its payload never runs."""
    import torch
    from safetensors.torch import load_file

    from orchestrator.tracking.writer import Tracker
    from orchestrator.tracking.recorder import TrialRecorder
    from tests.orchestrator.conftest import sqlite_uri

    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "results"
    tracker = Tracker(sqlite_uri(storage), "shared", artifact_root=resolve(str(storage)))
    parent = tracker.parent_run("shared/run-1", "orch run run-1")
    recorder = TrialRecorder(tracker, parent, "shared/run-1", "c001", "c001", {"orch.cell": "c001"},
                             {"d01": {"decode.beam_size": 2}})
    report = {"epoch": 1, "best_epoch": 1, "val_CIDEr": 0.5, "d01/val_CIDEr": 0.5, "d01/test_CIDEr": 0.4}
    recorder.record(report)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    config = yaml.safe_load((export_dir / "config.yaml").read_text())
    vocab = json.loads((export_dir / "vocab.json").read_text())
    torch.save(load_file(export_dir / "model.safetensors"), checkpoint / "best_model.pt")
    (checkpoint / "meta.json").write_text(json.dumps({"epoch": 1, "config": config, "vocab": vocab["itos"],
                                                      "variants": {"d01": config["decode"]}}))
    recorder.complete(report, checkpoint)
    stored = [path for path in storage.rglob("best_model.pt")]
    assert stored, "the trial's logged model holds its best checkpoint"
    marker = tmp_path / "unpickled"
    for path in stored:
        plant_pickle(path, marker)
    result = orch("export", "shared", "--storage", storage, "--out", tmp_path / "exports")
    one_error_line(result, "best_model.pt: a pickle holding more than tensors", "export another trial")
    assert not marker.exists()
    assert not (tmp_path / "exports" / "shared").exists() or not any((tmp_path / "exports").rglob("*.safetensors"))


# ------------------------------------------------------------------- every command, each file it reads
@pytest.mark.parametrize("command", ["status", "report", "export", "ui", "train", "run"])
def test_a_sqlite_store_that_is_not_a_database(orch, tiny_prepared, tmp_path, monkeypatch, command):
    """results/mlflow.db overwritten with garbage: named in one line, before any folder or Ray."""
    monkeypatch.chdir(tmp_path)
    storage = tmp_path / "results"
    storage.mkdir()
    (storage / "mlflow.db").write_bytes(bytes(range(256)) * 16)
    config = write_yaml(tmp_path / "t.yaml", {**TINY_EXPERIMENT, "name": "t", "data": {"prepared": str(tiny_prepared)},
                                              "ray": {"storage": str(storage)}})
    args = {"status": ["status", "--storage", storage], "report": ["report", "t", "--storage", storage],
            "export": ["export", "t", "--storage", storage], "ui": ["ui", "--storage", storage, "--port", "1"],
            "train": ["train", config], "run": ["run", config]}[command]
    one_error_line(orch(*args), f"{storage / 'mlflow.db'}: not a readable MLflow store")
    assert sorted(p.name for p in storage.iterdir()) in (["mlflow.db"], ["mlflow.db", "mlflow.db.lock"])


@pytest.mark.parametrize("name", ["manifest.json", "vocab.json"])
@pytest.mark.parametrize("command", ["train", "run"])
def test_a_truncated_prepared_dataset_is_refused_before_anything_starts(orch, tiny_prepared, tmp_path, monkeypatch,
                                                                       name, command):
    monkeypatch.chdir(tmp_path)
    prepared = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, prepared)
    data = (prepared / name).read_bytes()
    (prepared / name).write_bytes(data[:len(data) // 2])
    config = write_yaml(tmp_path / "t.yaml", {**TINY_EXPERIMENT, "name": "t", "data": {"prepared": str(prepared)},
                                              "ray": {"storage": str(tmp_path / "results")}})
    one_error_line(orch(command, config), "data.prepared", str(prepared / name) if name == "vocab.json" else
                   str(prepared / name), "run orch prepare again")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["train", "run", "run --dry-run"])
@pytest.mark.parametrize("text, said", [("name: t\nmodel: {decoder: lstm\n", "invalid YAML"),
                                         ("name: t\nmodel: !!python/object/apply:os.system ['touch MARKER']\n",
                                          "model")])
def test_a_broken_experiment_file(orch, tmp_path, monkeypatch, command, text, said):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.yaml"
    path.write_text(text.replace("MARKER", str(tmp_path / "ran")))  # the YAML tag's command, were it run
    one_error_line(orch(*command.split(), path), f"{path}:", said)
    assert not (tmp_path / "ran").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_prepare_with_a_truncated_karpathy_json(orch, tmp_path):
    source = karpathy(tmp_path, [entry("a.png", "train", 1), entry("b.png", "test", 2)])
    source.write_text(source.read_text()[:40])
    one_error_line(orch("prepare", source, "--images", tmp_path / "images", "--out", tmp_path / "out"),
                   f"{source}: not valid JSON")
    assert not (tmp_path / "out").exists()


def test_score_with_truncated_references(orch, tmp_path):
    refs = tmp_path / "refs.json"
    refs.write_text('{"images": [{"id": 1}], "annotations": [{"image_id": 1, "id"')
    preds = tmp_path / "preds.json"
    preds.write_text('[{"image_id": 1, "caption": "a b"}]')
    one_error_line(orch("score", "--references", refs, "--predictions", preds), str(refs))


# ------------------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("command", ["synth", "prepare"])
def test_a_full_disk_is_one_line_naming_it_and_leaves_nothing(orch, synth_dir, small_disk, command):
    """Writing images or a prepared dataset onto a full disk: `disk full: OUT` in one line, exit 2, and
    no half-written output (the staging folder is removed)."""
    from tests.conftest import fill

    disk = small_disk(1)
    ballast = fill(disk)
    out = disk / "out"
    args = {"synth": ["synth", out, "--n", "300", "--size", "64"],
            "prepare": ["prepare", synth_dir / "dataset.json", "--images", synth_dir, "--out", out]}[command]
    result = orch(*args)  # progress bars may come first
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.count("error: ") == 1, result.output
    last = " ".join(result.output[result.output.index("error: "):].split())
    assert last.startswith(f"error: disk full: {out} (free some space") and "orch resume" in last, result.output
    assert list(disk.iterdir()) == [ballast]

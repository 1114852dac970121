"""`orch synth` and `orch prepare` as a user runs them: exit codes and what they print."""

import json

import pytest

from trainers.data.prepared import PreparedDataset


@pytest.fixture
def synth(orch, tmp_path):
    result = orch("synth", tmp_path / "synth", "--n", 20, "--size", 24, "--seed", 4)
    assert result.exit_code == 0, result.output
    assert "wrote 20 synthetic 24x24 images (train 16, val 2, test 2; seed 4)" in result.output
    return tmp_path / "synth"


def test_synth_then_prepare_gives_a_dataset_training_accepts(orch, synth, tmp_path):
    out = tmp_path / "prepared"
    result = orch("prepare", synth / "dataset.json", "--images", synth, "--out", out,
                  "--min-word-freq", 1, "--image-size", 24)
    assert result.exit_code == 0, result.output
    assert "train: 16 images, 80 captions" in result.output
    assert PreparedDataset(out).split("val").images.shape == (2, 3, 24, 24)
    again = orch("prepare", synth / "dataset.json", "--images", synth, "--out", out,
                 "--min-word-freq", 1, "--image-size", 24)
    assert again.exit_code == 0 and "already up to date" in again.output


def test_synth_rejects_too_few_images(orch, tmp_path):
    result = orch("synth", tmp_path / "tiny", "--n", 3)
    assert result.exit_code == 2 and "--n 3" in result.output
    assert not (tmp_path / "tiny").exists()


def test_prepare_without_the_json_exits_2(orch, tmp_path):
    result = orch("prepare", tmp_path / "missing.json", "--images", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "missing.json: no such file" in result.output


def test_prepare_names_the_missing_key_and_image_index(orch, synth, tmp_path):
    document = json.loads((synth / "dataset.json").read_text())
    del document["images"][3]["split"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    result = orch("prepare", broken, "--images", synth, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "images[3] has no 'split' key" in result.output
    assert not (tmp_path / "out").exists()


def test_prepare_lists_every_missing_image_and_writes_nothing(orch, synth, tmp_path):
    for name in ["synth_000002.png", "synth_000017.png"]:
        (synth / "images" / name).unlink()
    args = ["prepare", synth / "dataset.json", "--images", synth, "--out", tmp_path / "out", "--image-size", 24]
    result = orch(*args)
    assert result.exit_code == 2
    assert "images/synth_000002.png: missing" in result.output
    assert "images/synth_000017.png: missing" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]
    skipped = orch(*args, "--skip-bad-images")
    assert skipped.exit_code == 0 and "skipped 2 unreadable images" in skipped.output
    assert PreparedDataset(tmp_path / "out").manifest["splits"]["train"]["images"] == 15

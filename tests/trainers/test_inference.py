"""trainers.inference: a trained model, loaded from its checkpoint, captions files and scores splits
exactly as its training run did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import tiny_trainer_dict
from trainers.config import DecodeConfig, TrainerConfig
from trainers.errors import InputError
from trainers.inference import caption_images, decode_settings, evaluate_split, load_model, plot_attention
from trainers.training import run_training


@pytest.fixture(scope="module")
def trained(prepared_dir, tmp_path_factory):
    """A tiny model trained for one epoch; its checkpoint folder and its final result."""
    config = TrainerConfig.model_validate(tiny_trainer_dict(prepared_dir, train={"epochs": 1}))
    run_dir = tmp_path_factory.mktemp("trained")
    final = run_training(config, run_dir)
    return run_dir / "checkpoint", final


@pytest.fixture(scope="module")
def images(synth_dir) -> list[Path]:
    return sorted((synth_dir / "images").glob("*.png"))[:3]


def test_the_checkpoint_reproduces_its_training_runs_test_captions_and_scores(trained, prepared_dir):
    checkpoint, final = trained
    model = load_model(checkpoint)
    scores, captions = evaluate_split(model, prepared_dir, "test", metrics=["Bleu", "CIDEr"])
    logged = json.loads(Path(final.predictions["d01"]).read_text())
    assert captions == [row["caption"] for row in logged]
    assert scores["CIDEr"] == pytest.approx(final.metrics["test_CIDEr"])
    assert scores["mean_caption_length"] == pytest.approx(final.metrics["test_mean_caption_length"])


def test_images_are_captioned_with_words_of_the_vocabulary(trained, images):
    model = load_model(trained[0])
    results = caption_images(model, images)
    assert [r.source for r in results] == [str(p) for p in images]
    for result in results:
        assert not result.error and result.caption
        assert set(result.caption.split()) <= set(model.vocab.itos)


def test_bytes_and_paths_give_the_same_caption(trained, images):
    model = load_model(trained[0])
    from_path, from_bytes = caption_images(model, [images[0], images[0].read_bytes()])
    assert from_bytes.caption == from_path.caption and from_bytes.source == "<bytes>"


def test_a_broken_or_missing_image_is_named_and_the_others_are_still_captioned(trained, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    results = caption_images(load_model(trained[0]), [images[0], broken, tmp_path / "missing.png", images[1]])
    assert [bool(r.error) for r in results] == [False, True, True, False]
    assert "cannot read the image" in results[1].error and results[2].error == "no such file"
    assert results[0].caption and results[3].caption


def test_decode_settings_override_only_what_is_given():
    base = DecodeConfig(strategy="greedy", beam_size=3, length_penalty=0.5)
    assert decode_settings(base) == base
    changed = decode_settings(base, beam_size=5, length_penalty=1.5)
    assert (changed.strategy, changed.beam_size, changed.length_penalty, changed.max_len) == ("beam", 5, 1.5, base.max_len)
    with pytest.raises(InputError, match="beam_size"):
        decode_settings(base, beam_size=0)


def test_the_attention_plot_shows_the_image_and_one_panel_per_word(trained, images, tmp_path):
    (result,) = caption_images(load_model(trained[0]), images[:1])
    path = plot_attention(result, tmp_path / "attention.png")
    with Image.open(path) as figure:
        rows = -(-(len(result.caption.split()) + 1) // 5)
        assert figure.width >= 1000 and figure.height >= 200 * rows


def test_a_folder_without_a_model_is_refused_with_what_was_expected(tmp_path):
    with pytest.raises(InputError, match="model.safetensors.*best_model.pt"):
        load_model(tmp_path)


def test_a_checkpoint_from_an_older_orch_with_a_results_key_still_loads(trained, images, tmp_path):
    import shutil

    old = shutil.copytree(trained[0], tmp_path / "old-checkpoint")
    meta = json.loads((old / "meta.json").read_text())
    meta["config"]["results"] = "results"  # older versions saved this key, which nothing read
    (old / "meta.json").write_text(json.dumps(meta))
    model = load_model(old)
    assert caption_images(model, images[:1])[0].caption == caption_images(load_model(trained[0]), images[:1])[0].caption

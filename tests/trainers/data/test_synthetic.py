import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from trainers.data.synthetic import (COLORS, POSITIONS, constant_caption_baseline, content_accuracy, named_objects,
                                     placed_objects, position_accuracy, write_synthetic_dataset)
from trainers.errors import InputError


def files(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_same_seed_same_files_other_seed_other_files(synth_dir, tmp_path):
    write_synthetic_dataset(tmp_path / "again", n=40, size=32, seed=0)
    write_synthetic_dataset(tmp_path / "other", n=40, size=32, seed=1)
    assert files(tmp_path / "again") == files(synth_dir)
    other = files(tmp_path / "other")
    assert other.keys() == files(synth_dir).keys() and other != files(synth_dir)


def test_karpathy_layout_with_splits_and_five_captions(synth_dir):
    document = json.loads((synth_dir / "dataset.json").read_text())
    images = document["images"]
    assert document["dataset"] == "synthetic" and len(images) == 40
    assert Counter(image["split"] for image in images) == {"train": 32, "val": 4, "test": 4}
    for image in images:
        assert (synth_dir / image["filepath"] / image["filename"]).is_file()
        assert len(image["sentences"]) == 5 and image["sentids"] == [s["sentid"] for s in image["sentences"]]
        assert all(s["tokens"] and s["raw"].endswith(".") for s in image["sentences"])
        assert len({s["raw"] for s in image["sentences"]}) == 5  # five phrasings


def test_every_caption_states_the_ground_truth(synth_dir):
    for image in json.loads((synth_dir / "dataset.json").read_text())["images"]:
        objects = image["synthetic"]["objects"]
        assert 1 <= len(objects) <= 3
        assert [o["position"] for o in objects] == [p for p in POSITIONS if p in {o["position"] for o in objects}]
        truth = Counter((o["color"], o["shape"]) for o in objects)
        for sentence in image["sentences"]:
            assert named_objects(sentence["raw"]) == truth
            text = " ".join(sentence["tokens"])
            assert all(f"{o['size']} {o['color']} {o['shape']}" in text and POSITIONS[o["position"]] in text
                       for o in objects)


def test_each_object_is_drawn_in_its_third_of_the_image(synth_dir):
    for image in json.loads((synth_dir / "dataset.json").read_text())["images"]:
        pixels = np.asarray(Image.open(synth_dir / image["filepath"] / image["filename"])).astype(int)  # (S, S, 3)
        thirds = np.array_split(pixels, 3, axis=1)
        for o in image["synthetic"]["objects"]:
            region = thirds[list(POSITIONS).index(o["position"])]
            distance = np.abs(region - np.array(COLORS[o["color"]])).sum(axis=-1)
            assert (distance < 30).sum() >= 9, (image["filename"], o)


def test_content_accuracy_checks_colours_and_shapes_and_nothing_extra():
    truth = {"objects": [{"shape": "circle", "color": "red", "size": "small", "position": "left"},
                         {"shape": "cross", "color": "blue", "size": "large", "position": "right"}]}
    right = "a small red circle on the left and a large blue cross on the right"
    assert content_accuracy([right, "A blue cross, and a red circle."], [truth, truth]) == 1.0
    assert content_accuracy(["a small green circle on the left and a large blue cross"], [truth]) == 0.0
    assert content_accuracy(["a small red circle on the left"], [truth]) == 0.0
    assert content_accuracy([right + " and a white square"], [truth]) == 0.0
    assert content_accuracy([right, "nothing here"], [truth, truth]) == 0.5
    with pytest.raises(ValueError):
        content_accuracy([right], [truth, truth])


def test_position_accuracy_also_checks_where_each_object_is():
    truth = {"objects": [{"shape": "circle", "color": "red", "size": "small", "position": "left"},
                         {"shape": "cross", "color": "blue", "size": "large", "position": "right"}]}
    right = "a small red circle on the left and a large blue cross on the right"
    position_first = "on the left there is a small red circle and on the right a large blue cross"
    assert position_accuracy([right, position_first], [truth, truth]) == 1.0
    swapped = "a small red circle on the right and a large blue cross on the left"
    assert content_accuracy([swapped], [truth]) == 1.0 and position_accuracy([swapped], [truth]) == 0.0
    assert position_accuracy(["a small red circle on the left and a large blue cross"], [truth]) == 0.0
    assert position_accuracy([right + " and in the middle"], [truth]) == 0.0


def test_every_reference_places_every_object(synth_dir):
    for image in json.loads((synth_dir / "dataset.json").read_text())["images"]:
        truth = Counter((o["color"], o["shape"], o["position"]) for o in image["synthetic"]["objects"])
        assert all(placed_objects(sentence["raw"]) == truth for sentence in image["sentences"])


def test_constant_caption_baseline_is_the_most_common_reference():
    references = [["a red circle", "a blue cross"], ["a blue cross"], ["a red circle", "a blue cross"]]
    assert constant_caption_baseline(references) == "a blue cross"


def test_bad_arguments_and_occupied_folders_are_input_errors(synth_dir, tmp_path):
    with pytest.raises(InputError, match="--n 5"):
        write_synthetic_dataset(tmp_path / "a", n=5)
    with pytest.raises(InputError, match="--size 8"):
        write_synthetic_dataset(tmp_path / "a", n=40, size=8)
    assert not (tmp_path / "a").exists()
    assert write_synthetic_dataset(synth_dir, n=40, size=32, seed=0).up_to_date
    with pytest.raises(InputError, match="not this synthetic dataset"):
        write_synthetic_dataset(synth_dir, n=40, size=32, seed=3)

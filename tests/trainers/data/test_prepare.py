import json

import numpy as np
import pytest
from PIL import Image

from tests.trainers.data.karpathy_files import image_entry, write_karpathy
from trainers.data import prepare as prepare_module
from trainers.data.prepare import prepare_dataset, read_image_rgb
from trainers.data.prepared import PreparedDataset
from trainers.errors import InputError


def hidden_leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def run(json_path, out=None, **options):
    out = out or json_path.parent / "out"
    return prepare_dataset(json_path, json_path.parent, out, **{"min_word_freq": 1, "image_size": 8, **options})


def test_vocabulary_comes_from_train_only_and_drops_rare_words(small_flickr):
    result = run(small_flickr, min_word_freq=2)
    dataset = PreparedDataset(result.out)
    assert dataset.vocab.itos[4:] == ["a", "dog", "cat", "the"]
    val = dataset.split("val")
    assert val.references == [["a zebra runs"]]
    assert dataset.vocab.decode(val.captions[0]) == "a"
    assert list(val.captions[0][:5]) == [1, dataset.vocab.stoi["a"], 3, 3, 2]  # zebra, runs -> <unk>


def test_long_captions_are_truncated_and_counted_but_references_stay_whole(small_flickr):
    result = run(small_flickr, max_len=3)
    assert result.manifest.captions_truncated == 3
    dataset = PreparedDataset(result.out)
    train = dataset.split("train")
    assert train.captions.shape == (5, 5)  # max_len + <start> + <end>
    assert dataset.vocab.decode(train.captions[1]) == "a dog jumps"  # "a dog jumps over a log", cut
    assert train.lengths[1] == 5
    assert train.references[0] == ["a dog runs", "a dog jumps over a log"]
    assert "truncated: 3" in result.describe()


def test_splits_images_and_manifest(small_flickr):
    result = run(small_flickr)
    dataset = PreparedDataset(result.out)
    train = dataset.split("train")
    assert len(train) == 3 and train.images.shape == (3, 3, 8, 8) and train.images.dtype == np.uint8
    assert (train.images[:, 0] == 10).all() and (train.images[:, 2] == 30).all()
    assert list(train.caption_image) == [0, 0, 1, 1, 2]
    assert train.image_ids == [0, 1, 2] and train.filenames == ["a.jpg", "b.jpg", "c.jpg"]
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": {"images": 3, "captions": 5}, "val": {"images": 1, "captions": 1},
                                  "test": {"images": 1, "captions": 1}}
    assert manifest["options"] == {"min_word_freq": 1, "max_len": 50, "image_size": 8, "skip_bad_images": False}
    assert len(manifest["source_sha256"]) == 64 and manifest["created"]
    assert manifest["vocab_size"] == len(dataset.vocab)


def test_coco_style_subfolders_restval_and_cocoids(tmp_path):
    entries = [image_entry("COCO_train2014_1.jpg", "train", 0, ["a bus"], filepath="train2014"),
               image_entry("COCO_val2014_2.jpg", "restval", 1, ["a red bus"], filepath="val2014"),
               image_entry("COCO_val2014_3.jpg", "val", 2, ["a bus"], filepath="val2014"),
               image_entry("COCO_val2014_4.jpg", "test", 3, ["a bus"], filepath="val2014")]
    for cocoid, entry in zip([101, 102, 103, 104], entries):
        entry["cocoid"] = cocoid
    train = PreparedDataset(run(write_karpathy(tmp_path, entries, name="coco")).out).split("train")
    assert train.filenames == ["train2014/COCO_train2014_1.jpg", "val2014/COCO_val2014_2.jpg"]
    assert train.image_ids == [101, 102]


def solid(mode, value, **info):
    image = Image.new(mode, (4, 4), value)
    image.info.update(info)
    return image


def palette_image(transparent: bool):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    if transparent:
        image.info["transparency"] = 1
    return image


@pytest.mark.parametrize("image, expected", [
    (solid("L", 100), (100, 100, 100)),
    (solid("CMYK", (0, 255, 0, 0)), (255, 0, 255)),
    (palette_image(transparent=False), (200, 100, 50)),
    (palette_image(transparent=True), (255, 255, 255)),
    (solid("RGBA", (0, 0, 255, 0)), (255, 255, 255)),
    (solid("RGBA", (0, 0, 255, 255)), (0, 0, 255)),
    (solid("LA", (0, 128)), (127, 127, 127)),
], ids=["L", "CMYK", "P", "P-transparent", "RGBA-clear", "RGBA-opaque", "LA-half"])
def test_every_image_mode_becomes_rgb_with_alpha_over_white(tmp_path, image, expected):
    path = tmp_path / ("image.jpg" if image.mode == "CMYK" else "image.png")
    image.save(path, **({"quality": 100} if image.mode == "CMYK" else {}))
    pixels = read_image_rgb(path, 4)  # (3, 4, 4)
    assert pixels.shape == (3, 4, 4) and pixels.dtype == np.uint8
    assert np.abs(pixels.reshape(3, -1).astype(int) - np.array(expected)[:, None]).max() <= 2


def test_images_are_stretched_to_the_square_size(tmp_path):
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (300, 120), (0, 200, 0)).save(path)
    assert read_image_rgb(path, 16).shape == (3, 16, 16)


def test_every_missing_or_unreadable_image_is_listed_and_nothing_is_written(small_flickr):
    (small_flickr.parent / "b.jpg").unlink()
    (small_flickr.parent / "d.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="2 images under --images") as error:
        run(small_flickr)
    assert "b.jpg: missing" in str(error.value) and "d.jpg: unreadable" in str(error.value)
    assert "--skip-bad-images" in str(error.value)
    assert not (small_flickr.parent / "out").exists() and hidden_leftovers(small_flickr.parent) == []


def test_skip_bad_images_leaves_them_out_and_lists_them(small_flickr):
    (small_flickr.parent / "b.jpg").unlink()
    result = run(small_flickr, skip_bad_images=True)
    assert [(s.path, s.reason) for s in result.manifest.images_skipped] == [("b.jpg", "missing")]
    assert "b.jpg: missing" in result.describe()
    train = PreparedDataset(result.out).split("train")
    assert train.filenames == ["a.jpg", "c.jpg"] and list(train.caption_image) == [0, 0, 1]


def truncate_png(path):
    """A PNG whose header reads but whose pixels do not: caught only when decoded."""
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])


def test_an_image_that_fails_to_decode_fails_the_run_after_writing_started(small_flickr):
    truncate_png(small_flickr.parent / "a.jpg")
    with pytest.raises(InputError, match="a.jpg: cannot decode"):
        run(small_flickr)
    assert not (small_flickr.parent / "out").exists() and hidden_leftovers(small_flickr.parent) == []


def test_skipping_an_undecodable_image_keeps_rows_and_captions_aligned(small_flickr):
    truncate_png(small_flickr.parent / "a.jpg")
    result = run(small_flickr, skip_bad_images=True)
    train = PreparedDataset(result.out).split("train")
    assert train.images.shape == (2, 3, 8, 8) and train.filenames == ["b.jpg", "c.jpg"]
    assert list(train.caption_image) == [0, 0, 1]
    assert result.manifest.splits["train"].images == 2


@pytest.mark.parametrize("failure", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_no_output_and_no_temp_folder(small_flickr, monkeypatch, failure):
    calls = []
    real = prepare_module.read_image_rgb

    def failing_after_two(path, size):
        calls.append(path)
        if len(calls) > 2:
            raise failure
        return real(path, size)

    monkeypatch.setattr(prepare_module, "read_image_rgb", failing_after_two)
    with pytest.raises(type(failure)):
        run(small_flickr)
    assert not (small_flickr.parent / "out").exists() and hidden_leftovers(small_flickr.parent) == []


def test_bad_options_and_paths_are_input_errors(small_flickr, tmp_path):
    with pytest.raises(InputError, match="--max-len"):
        run(small_flickr, max_len=0)
    with pytest.raises(InputError, match="--min-word-freq"):
        run(small_flickr, min_word_freq=0)
    with pytest.raises(InputError, match="absent.json: no such file"):
        run(tmp_path / "absent.json")
    with pytest.raises(InputError, match="--images .*: no such folder"):
        prepare_dataset(small_flickr, tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_train_image_is_an_input_error(tmp_path):
    json_path = write_karpathy(tmp_path, [image_entry("a.jpg", "val", 0, ["a dog"])])
    with pytest.raises(InputError, match="no readable image in the train split"):
        run(json_path)


def test_existing_output_is_reused_only_when_source_and_options_match(small_flickr):
    out = small_flickr.parent / "out"
    first = run(small_flickr)
    again = run(small_flickr)
    assert again.up_to_date and not first.up_to_date and "already up to date" in again.describe()
    assert again.manifest.created == first.manifest.created
    with pytest.raises(InputError, match=r"other options \(max_len 50 -> 10\)"):
        run(small_flickr, max_len=10)
    other = write_karpathy(small_flickr.parent / "other", [image_entry("z.jpg", "train", 0, ["a cat"])])
    with pytest.raises(InputError, match="prepared from another JSON"):
        prepare_dataset(other, other.parent, out, min_word_freq=1, image_size=8)


def test_an_occupied_output_folder_is_refused_and_an_empty_one_is_used(small_flickr):
    occupied = small_flickr.parent / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="something other than a prepared dataset"):
        run(small_flickr, out=occupied)
    assert (occupied / "notes.txt").read_text() == "mine"
    empty = small_flickr.parent / "empty"
    empty.mkdir()
    assert PreparedDataset(run(small_flickr, out=empty).out).split("test").references == [["a dog sleeps"]]


def test_images_given_as_the_folder_the_json_already_names_get_the_folder_to_pass(tmp_path):
    """COCO's JSON says `filepath: val2014`; `--images .../val2014` joins it twice. One line says which
    folder to pass, and nothing is written, even with --skip-bad-images."""
    entries = [image_entry(f"COCO_val2014_{i}.jpg", split, i, ["a bus"], filepath="val2014")
               for i, split in enumerate(["train", "train", "val", "test"])]
    json_path = write_karpathy(tmp_path, entries, name="coco")
    for skip in (False, True):
        with pytest.raises(InputError) as raised:
            prepare_dataset(json_path, tmp_path / "val2014", tmp_path / "out", min_word_freq=1, image_size=8,
                            skip_bad_images=skip)
        assert str(raised.value) == (
            f"--images {tmp_path / 'val2014'}: the JSON's filepath already names val2014/, so its images were looked "
            f"for at {tmp_path / 'val2014' / 'val2014'}/...: pass --images {tmp_path} (the folder that holds val2014/)")
    assert not (tmp_path / "out").exists()

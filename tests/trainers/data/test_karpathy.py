import json
import re
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.trainers.data.karpathy_files import image_entry
from trainers.data.karpathy import parse_karpathy, read_karpathy_json
from trainers.errors import InputError
from trainers.text import tokenize


def parse(entries, name="test"):
    return parse_karpathy({"dataset": name, "images": entries}, source="dataset.json")


def test_flickr_style_entries_have_bare_filenames_and_tokenized_raw_text():
    dataset = parse([image_entry("1000268201.jpg", "train", 7, ["A child, in a pink dress!"])], name="flickr8k")
    (image,) = dataset.images
    assert dataset.name == "flickr8k"
    assert image.path == "1000268201.jpg" and image.image_id == 7 and image.split == "train"
    assert image.captions == (("a", "child", "in", "a", "pink", "dress"),)


def test_coco_style_entries_join_filepath_use_cocoid_and_count_restval_as_train():
    entry = image_entry("COCO_val2014_000000391895.jpg", "restval", 3, ["A man rides a bike."], filepath="val2014")
    entry["cocoid"] = 391895
    (image,) = parse([entry]).images
    assert image.path == "val2014/COCO_val2014_000000391895.jpg"
    assert image.image_id == 391895
    assert image.split == "train"


def test_tokens_are_used_when_raw_is_absent():
    entry = image_entry("a.jpg", "val", 0, ["unused"])
    entry["sentences"] = [{"tokens": ["Two", "dogs"]}]
    assert parse([entry]).images[0].captions == (("two", "dogs"),)


def test_synthetic_ground_truth_is_kept():
    entry = image_entry("a.png", "test", 0, ["a red circle"])
    entry["synthetic"] = {"objects": [{"shape": "circle", "color": "red", "size": "small", "position": "left"}]}
    assert parse([entry]).images[0].ground_truth == entry["synthetic"]


@pytest.mark.parametrize("key", ["filename", "split", "sentences"])
def test_a_missing_key_is_named_with_the_image_index(key):
    entries = [image_entry("a.jpg", "train", 0, ["x"]), image_entry("b.jpg", "train", 1, ["y"])]
    del entries[1][key]
    with pytest.raises(InputError, match=rf"images\[1\] has no '{key}' key"):
        parse(entries)


def test_other_format_errors_name_the_place():
    with pytest.raises(InputError, match="top level needs an 'images' list"):
        parse_karpathy({"annotations": []}, source="dataset.json")
    no_id = image_entry("a.jpg", "train", 0, ["x"])
    del no_id["imgid"]
    with pytest.raises(InputError, match=r"images\[0\] needs an integer 'cocoid' or 'imgid'"):
        parse([no_id])
    with pytest.raises(InputError, match=r"images\[0\] has split 'dev'"):
        parse([image_entry("a.jpg", "dev", 0, ["x"])])
    bad_sentence = image_entry("a.jpg", "train", 0, ["x", "y"])
    bad_sentence["sentences"][1] = {"sentid": 3}
    with pytest.raises(InputError, match=r"images\[0\]\.sentences\[1\] has neither a 'raw'"):
        parse([bad_sentence])


def test_every_uncaptioned_image_is_listed():
    entries = [image_entry("a.jpg", "train", 0, []), image_entry("b.jpg", "train", 1, ["x"]),
               image_entry("c.jpg", "val", 2, [])]
    with pytest.raises(InputError, match="2 images have no caption") as error:
        parse(entries)
    assert "images[0] a.jpg" in str(error.value) and "images[2] c.jpg" in str(error.value)


def test_repeated_image_ids_are_listed():
    with pytest.raises(InputError, match="ids must be unique") as error:
        parse([image_entry("a.jpg", "train", 5, ["x"]), image_entry("b.jpg", "val", 5, ["y"])])
    assert "images[1] id 5" in str(error.value)


def test_missing_or_broken_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_karpathy_json(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(InputError, match="broken.json: not valid JSON"):
        read_karpathy_json(broken)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"images": [image_entry("a.jpg", "train", 0, ["x"])]}))
    assert read_karpathy_json(good).name == "good"


# Words PTB keeps whole: it splits a few on purpose ("gonna" -> "gon na", "cannot" -> "can not").
whole_words = st.from_regex(r"[a-z]{2,8}", fullmatch=True).filter(lambda word: tokenize(word) == [word])
sentences = st.lists(st.lists(whole_words, min_size=1, max_size=12), min_size=1, max_size=5)


@given(captions=sentences, shout=st.booleans(), ending=st.sampled_from(["!", " .", "?", ""]))
def test_raw_text_is_lower_cased_and_stripped_of_punctuation_like_tokens(captions, shout, ending):
    raw = [", ".join(words).upper() + ending if shout else " ".join(words) + ending for words in captions]
    entry = image_entry("a.jpg", "train", 0, raw)
    from_raw = parse([entry]).images[0].captions
    for sentence, words in zip(entry["sentences"], captions):
        sentence["tokens"] = words
        del sentence["raw"]
    assert from_raw == parse([entry]).images[0].captions == tuple(tuple(words) for words in captions)


def _entry(**changes):
    entry = image_entry("a.jpg", "train", 0, ["x"])
    entry.update(changes)
    return entry


@pytest.mark.parametrize("entry, said", [
    ("not an object", r"dataset\.json: images\[0\] is not an object$"),
    (_entry(filename=""), r"dataset\.json: images\[0\] needs a non-empty 'filename' string \(and 'filepath', when "
                          r"present, a string\)$"),
    (_entry(filename=7), r"images\[0\] needs a non-empty 'filename' string"),
    (_entry(filepath=3), r"images\[0\] needs a non-empty 'filename' string"),
    (_entry(sentences="a red square"), r"dataset\.json: images\[0\]\.sentences is not a list$"),
    (_entry(split="dev"), r"images\[0\] has split 'dev'; expected one of train, restval, val, test$"),
])
def test_each_malformed_entry_is_named_in_words(entry, said):
    """The message a user reads, whole: the file, the image's index and what is wrong with it."""
    with pytest.raises(InputError, match=said):
        parse([entry])


def test_a_missing_key_lists_every_key_an_image_needs():
    entry = _entry()
    del entry["sentences"]
    with pytest.raises(InputError, match=r"images\[0\] has no 'sentences' key \(a Karpathy split JSON image needs "
                                         r"filename, split, sentences\)$"):
        parse([entry])


@pytest.mark.parametrize("filename, filepath", [
    ("/etc/passwd", None), ("../x.png", None), ("x.png", "../up"), ("a\\b.png", None), ("C:x.png", None),
    ("x.png", "/abs"),
])
def test_a_path_outside_the_images_folder_is_refused_naming_it(filename, filepath):
    entry = image_entry(filename, "train", 0, ["x"], filepath=filepath)
    named = str(PurePosixPath(filepath or "", filename))
    with pytest.raises(InputError, match=rf"images\[0\] names {re.escape(repr(named))}, outside the --images folder"):
        parse([entry])


@pytest.mark.parametrize("filename, filepath", [("a..b.png", None), ("x.png", "val2014"), ("d/x.png", "c")])
def test_relative_paths_inside_the_images_folder_are_kept(filename, filepath):
    (image,) = parse([image_entry(filename, "train", 0, ["x"], filepath=filepath)]).images
    assert image.path == str(PurePosixPath(filepath or "", filename))


def test_ground_truth_that_is_not_an_object_is_left_out():
    assert parse([_entry(synthetic=["not", "an", "object"])]).images[0].ground_truth is None


def test_uncaptioned_and_repeated_images_are_named_with_the_file():
    with pytest.raises(InputError, match=r"^dataset\.json: 2 images have no caption:\n  images\[0\] a\.jpg\n"
                                         r"  images\[2\] c\.jpg$"):
        parse([image_entry("a.jpg", "train", 0, []), image_entry("b.jpg", "train", 1, ["y"]),
               image_entry("c.jpg", "train", 2, [])])
    with pytest.raises(InputError, match=r"^dataset\.json: image ids must be unique; these repeat:\n"
                                         r"  images\[0\] id 5\n  images\[1\] id 5$"):
        parse([image_entry("a.jpg", "train", 5, ["x"]), image_entry("b.jpg", "val", 5, ["y"])])

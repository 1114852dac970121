import json

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

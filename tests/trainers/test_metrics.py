"""Caption scores reproduce pycocoevalcap and nlg-eval, and bad input is named, not crashed on."""

import functools
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.errors import InputError
from trainers.metrics import NO_JAVA_ENV, format_scores, java_available, score_captions, score_files, stop_meteor

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
ALL_SCORES = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
pytestmark = pytest.mark.usefixtures("meteor_freed_after_the_module")
needs_java = pytest.mark.skipif(not java_available(), reason="METEOR and the PTB tokenizer need Java")


def fixture_dir(name: str) -> Path:
    folder = FIXTURES / name
    if not folder.is_dir():
        pytest.skip(f"fixture {folder} not present")
    return folder


@pytest.fixture(scope="module")
def nlgeval():
    folder = fixture_dir("nlgeval")
    lines = {name: (folder / name).read_text(encoding="utf-8").splitlines() for name in ("hyp.txt", "ref1.txt", "ref2.txt")}
    # nlg-eval's setup: no PTB tokenization, lines stripped, case kept.
    references = {i: [lines["ref1.txt"][i].strip(), lines["ref2.txt"][i].strip()] for i in range(len(lines["hyp.txt"]))}
    predictions = {i: hyp.strip() for i, hyp in enumerate(lines["hyp.txt"])}
    return references, predictions, json.loads((folder / "expected.json").read_text(encoding="utf-8"))


def test_nlgeval_corpus_scores_without_meteor(nlgeval):
    references, predictions, expected = nlgeval
    scores = score_captions(references, predictions, metrics=["Bleu", "ROUGE_L", "CIDEr"], tokenizer="none")
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    for name, value in scores.items():
        assert value == pytest.approx(expected["expected_corpus_scores_5dp"][name], abs=1e-5), name


@needs_java
def test_nlgeval_corpus_meteor(nlgeval):
    references, predictions, expected = nlgeval
    scores = score_captions(references, predictions, metrics=["METEOR"], tokenizer="none")
    assert scores["METEOR"] == pytest.approx(expected["expected_corpus_scores_5dp"]["METEOR"], abs=1e-5)


@needs_java
@pytest.mark.parametrize("case", range(3), ids=["english", "french", "japanese"])
def test_nlgeval_single_pairs_to_their_stated_precision(nlgeval, case):
    expected = nlgeval[2]["expected_single_pair_cases_5dp"][case]
    scores = score_captions({0: expected["refs"]}, {0: expected["hyp"]}, tokenizer="none")
    checked = {key: value for key, value in expected.items() if key not in ("refs", "hyp")}
    for key, value in checked.items():
        tolerance = 1e-3 if key.endswith("_3dp") else 1e-5
        assert scores[key.removesuffix("_3dp")] == pytest.approx(value, abs=tolerance), key


@pytest.mark.integration
@needs_java
def test_coco_karpathy_test_split_matches_pycocoevalcap_to_1e7():
    folder = fixture_dir("coco_karpathy_test_eval")
    expected = json.loads((folder / "expected.json").read_text())
    scores = score_files(folder / expected["files"]["references"], folder / expected["files"]["predictions"])
    assert list(scores) == ALL_SCORES
    for name in ALL_SCORES:
        assert scores[name] == pytest.approx(expected["expected"][name], abs=expected["tolerance"]), name


@pytest.mark.integration
def test_python_tokenizer_scores_the_coco_split_as_the_java_one_does(monkeypatch):
    """Measured: all of Bleu, ROUGE_L and CIDEr equal the PTB-tokenized scores (|difference| < 1e-12)."""
    folder = fixture_dir("coco_karpathy_test_eval")
    expected = json.loads((folder / "expected.json").read_text())
    monkeypatch.setenv(NO_JAVA_ENV, "1")
    with pytest.warns(RuntimeWarning, match="Java not found"):
        scores = score_files(folder / expected["files"]["references"], folder / expected["files"]["predictions"])
    assert "METEOR" not in scores
    assert scores["CIDEr"] == pytest.approx(expected["expected"]["CIDEr"], abs=1e-6)
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"):
        assert scores[name] == pytest.approx(expected["expected"][name], abs=1e-6), name


REFERENCES = {
    "dog": ["A dog runs on the grass.", "A brown dog is running outside."],
    "cat": ["A cat sleeps on a red sofa.", "The cat is asleep on the couch."],
    "bus": ["A bus drives down the street.", "A red bus on a city road."],
}
PREDICTIONS = {"dog": "A dog is running on grass.", "cat": "A cat sleeping on a sofa.", "bus": "A bus on the street."}


def test_without_java_scores_use_the_python_tokenizer_and_leave_out_meteor(monkeypatch):
    monkeypatch.setenv(NO_JAVA_ENV, "1")
    with pytest.warns(RuntimeWarning, match="Java not found"):
        scores = score_captions(REFERENCES, PREDICTIONS)
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    assert scores == score_captions(REFERENCES, PREDICTIONS, metrics=["Bleu", "ROUGE_L", "CIDEr"], tokenizer="python")
    assert "n/a (Java not found)" in format_scores(scores)
    assert "METEOR" not in format_scores(scores, ["Bleu", "CIDEr"])  # not asked for: no row


@needs_java
def test_ptb_and_python_tokenizers_agree_on_ordinary_captions():
    metrics = ["Bleu", "ROUGE_L", "CIDEr"]
    assert score_captions(REFERENCES, PREDICTIONS, metrics) == score_captions(REFERENCES, PREDICTIONS, metrics, "python")


@needs_java
def test_meteor_reads_a_caption_holding_its_separator_or_double_spaces_as_pycocoevalcap_does():
    """METEOR's input lines are fields split by "|||": a hypothesis holding one, or runs of spaces, is
    cleaned as pycocoevalcap's Meteor cleans it, so the scores stay equal."""
    references = {1: ["a dog runs on the grass", "a brown dog outside"], 2: ["a red bus on a road"]}
    predictions = {1: "a dog ||| runs  on the  grass", 2: "a red  bus|||on a road"}
    scores = score_captions(references, predictions, metrics=["METEOR"], tokenizer="none")
    assert scores["METEOR"] == pytest.approx(pycocoevalcaps_meteor(references, predictions), abs=1e-12)
    assert scores["METEOR"] > 0.3


def fake_java(folder: Path, script: str) -> Path:
    """A `java` on PATH that runs `script` (sh) whatever it is asked."""
    folder.mkdir()
    (folder / "java").write_text(f"#!/bin/sh\n{script}\n")
    (folder / "java").chmod(0o755)
    return folder


def test_a_java_scorer_that_fails_is_reported_with_the_end_of_what_it_said(monkeypatch, tmp_path):
    """The last 2000 characters of its stderr, undecodable bytes replaced: the PTB tokenizer's, and METEOR's."""
    stderr = b"x" * 3000 + b" \xff the end\n"
    (tmp_path / "stderr").write_bytes(stderr)
    monkeypatch.setenv("PATH", str(fake_java(tmp_path / "bin", f"/bin/cat {tmp_path / 'stderr'} >&2; exit 1")))
    monkeypatch.delenv(NO_JAVA_ENV, raising=False)
    said = stderr.decode(errors="replace")[-2000:]
    with pytest.raises(RuntimeError) as error:
        score_captions(REFERENCES, PREDICTIONS, metrics=["Bleu"], tokenizer="ptb")
    assert str(error.value) == f"PTB tokenizer failed: {said}"
    stop_meteor()  # a METEOR an earlier test started would answer instead
    try:
        with pytest.raises(RuntimeError) as error:
            score_captions(REFERENCES, PREDICTIONS, metrics=["METEOR"], tokenizer="none")
        assert str(error.value) == f"METEOR stopped: {said}"
    finally:
        stop_meteor()


def test_one_meteor_process_serves_every_scoring_until_stop_meteor_ends_it(monkeypatch, tmp_path):
    """A stand-in `java` that waits on its input as METEOR does: started once, reused, ended by
    stop_meteor, and started afresh by the next scoring."""
    from trainers.metrics import _shared_meteor

    monkeypatch.setenv("PATH", str(fake_java(tmp_path / "bin", "exec /bin/cat > /dev/null")))
    stop_meteor()  # whatever an earlier test left
    try:
        first = _shared_meteor()
        assert _shared_meteor() is first and first.is_running()
        stop_meteor()
        assert first.meteor_p.poll() is not None
        second = _shared_meteor()
        assert second is not first and second.is_running()
    finally:
        stop_meteor()


def test_without_a_java_on_the_path_scores_use_the_python_tokenizer(monkeypatch, tmp_path):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(NO_JAVA_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="Java not found"):
        scores = score_captions(REFERENCES, PREDICTIONS)
    assert scores == score_captions(REFERENCES, PREDICTIONS, metrics=["Bleu", "ROUGE_L", "CIDEr"], tokenizer="python")


@needs_java
def test_a_line_break_inside_a_caption_does_not_shift_the_others():
    broken = {key: [caption.replace(" ", "\r", 1) for caption in captions] for key, captions in REFERENCES.items()}
    broken["dog"][0] = "A dog\u2028runs on\nthe grass."
    metrics = ["Bleu", "ROUGE_L", "CIDEr"]
    assert score_captions(broken, PREDICTIONS, metrics) == score_captions(REFERENCES, PREDICTIONS, metrics)


def test_only_the_chosen_metric_families_are_reported():
    scores = score_captions(REFERENCES, PREDICTIONS, metrics=["CIDEr", "Bleu"], tokenizer="python")
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]


@pytest.mark.parametrize("metrics", [["BLEU"], ["Bleu_4"], []])
def test_unknown_metric_names_are_refused_with_the_valid_ones_listed(metrics):
    with pytest.raises(InputError, match="Bleu, METEOR, ROUGE_L, CIDEr"):
        score_captions(REFERENCES, PREDICTIONS, metrics=metrics)


@pytest.mark.parametrize("metrics, named", [(["BLEU", "Meteor"], "'BLEU', 'Meteor'"), ([], "(none given)")])
def test_an_unknown_metric_is_named_in_the_message(metrics, named):
    with pytest.raises(InputError) as error:
        score_captions(REFERENCES, PREDICTIONS, metrics=metrics)
    assert str(error.value) == f"unknown metric(s) {named}: choose from Bleu, METEOR, ROUGE_L, CIDEr"


def test_an_unknown_tokenizer_is_refused_with_the_three_named():
    with pytest.raises(InputError) as error:
        score_captions(REFERENCES, PREDICTIONS, tokenizer="spacy")
    assert str(error.value) == "unknown tokenizer 'spacy': use 'ptb', 'python' or 'none'"


@pytest.mark.parametrize("extra, listed", [(10, "'x0', 'x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7', 'x8', 'x9'"),
                                           (11, "'x0', 'x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7', 'x8', 'x9' (and 1 more)")])
def test_ten_keys_are_listed_whole_and_the_eleventh_counted(extra, listed):
    with pytest.raises(InputError) as error:
        score_captions(REFERENCES, dict(PREDICTIONS, **{f"x{i}": "a dog" for i in range(extra)}), tokenizer="none")
    assert str(error.value) == f"{extra} prediction(s) for images without references: {listed}"


def test_nothing_to_score_against_and_images_without_captions_are_refused():
    with pytest.raises(InputError) as error:
        score_captions({}, {}, tokenizer="none")
    assert str(error.value) == "no reference captions to score against"
    with pytest.raises(InputError) as error:
        score_captions(dict(REFERENCES, cow=[], owl=[]), dict(PREDICTIONS, cow="a cow", owl="an owl"), tokenizer="none")
    assert str(error.value) == "2 image(s) with no reference caption: 'cow', 'owl'"


def test_predictions_for_unknown_images_are_listed_first_ten_and_a_count():
    predictions = dict(PREDICTIONS, **{f"extra{i}": "a dog" for i in range(12)})
    with pytest.raises(InputError) as error:
        score_captions(REFERENCES, predictions, tokenizer="none")
    message = str(error.value)
    assert "12 prediction(s) for images without references" in message
    assert "'extra0'" in message and "'extra9'" in message and "'extra10'" not in message
    assert "(and 2 more)" in message


def test_without_java_only_what_needs_it_is_given_up_and_the_warning_points_past_orch(monkeypatch):
    """Pre-tokenized captions and no METEOR asked for need no Java: no warning, captions as given (a
    tokenizer would lower-case "Dog"). PTB or METEOR asked for: a warning pointing past orch, at its caller."""
    monkeypatch.setenv(NO_JAVA_ENV, "1")
    references, predictions = {1: ["a Dog runs", "the Dog runs"]}, {1: "a dog runs"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_given = score_captions(references, predictions, metrics=["Bleu"], tokenizer="none")
    assert as_given["Bleu_1"] == pytest.approx(2 / 3)
    for tokenizer, metrics in [("ptb", ["Bleu"]), ("none", ["Bleu", "METEOR"]), ("python", ["METEOR", "Bleu"])]:
        with pytest.warns(RuntimeWarning) as caught:
            scores = score_captions(references, predictions, metrics=metrics, tokenizer=tokenizer)
        assert str(caught[0].message) == ("Java not found (pycocoevalcap's PTB tokenizer and METEOR need it): "
                                          "tokenizing captions in Python and leaving METEOR out of the scores")
        assert Path(caught[0].filename).name != "metrics.py"  # the caller's line (here), not orch's own
        assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
        assert scores["Bleu_1"] == pytest.approx(2 / 3 if tokenizer == "none" else 1.0)


def test_images_without_a_prediction_are_listed():
    with pytest.raises(InputError, match=r"1 image\(s\) without a prediction: 'bus'"):
        score_captions(REFERENCES, {"dog": "a dog", "cat": "a cat"}, tokenizer="none")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a", "dog", "man", "red", "bus", "on", "the", "street", "runs"]), min_size=4, max_size=12))
def test_a_prediction_equal_to_its_references_scores_full_marks(words):
    caption = " ".join(words)
    scores = score_captions({1: [caption, caption], 2: ["x y z w"]}, {1: caption, 2: "x y z w"},
                            metrics=["Bleu", "ROUGE_L"], tokenizer="none")
    assert scores["Bleu_1"] == pytest.approx(1.0) and scores["Bleu_4"] == pytest.approx(1.0)
    assert scores["ROUGE_L"] == pytest.approx(1.0)


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def coco_files(tmp_path):
    references = write_json(tmp_path / "refs.json", {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"image_id": 1, "caption": "A dog runs."}, {"image_id": 1, "caption": "A dog is running."},
                        {"image_id": 2, "caption": "A red bus."}],
    })
    predictions = write_json(tmp_path / "preds.json", [{"image_id": 1, "caption": "a dog runs"},
                                                       {"image_id": 2, "caption": "a bus"}])
    return references, predictions


def test_score_files_reads_coco_caption_format(coco_files, monkeypatch):
    monkeypatch.setenv(NO_JAVA_ENV, "1")  # the file handling is under test here, not the Java scorers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = score_files(*coco_files, metrics=["Bleu", "CIDEr"])
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    assert all(math.isfinite(value) for value in scores.values())


def test_a_missing_file_is_named(coco_files, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match=f"predictions file {missing} not found"):
        score_files(coco_files[0], missing)


def test_invalid_json_names_the_file_and_line(coco_files, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"image_id": 1,\n "caption": }]')
    with pytest.raises(InputError, match=rf"predictions file {broken} is not valid JSON \(line 3"):
        score_files(coco_files[0], broken)


@pytest.mark.parametrize("predictions, message", [
    ({"image_id": 1, "caption": "a dog"}, "must be a list"),
    ([{"image_id": 1, "caption": 5}], r"the top level\[0\] needs an 'image_id'"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}, {"image_id": 2, "caption": "c"}],
     r"1 image\(s\) have more than one prediction: 1"),
    ([{"image_id": 1, "caption": "a dog"}, {"image_id": 3, "caption": "a cat"}],
     r"does not match .*refs.json: 1 prediction\(s\) for images without references: 3; 1 image\(s\) without a prediction: 2"),
])
def test_malformed_predictions_are_named(coco_files, tmp_path, predictions, message):
    path = write_json(tmp_path / "bad.json", predictions)
    with pytest.raises(InputError, match=message):
        score_files(coco_files[0], path)


def test_string_and_integer_ids_that_only_differ_in_type_get_a_hint(coco_files, tmp_path):
    path = write_json(tmp_path / "string_ids.json", [{"image_id": "1", "caption": "a"}, {"image_id": "2", "caption": "b"}])
    with pytest.raises(InputError) as error:
        score_files(coco_files[0], path)
    assert str(error.value) == (
        f"{path} does not match {coco_files[0]}: 2 prediction(s) for images without references: '1', '2'; "
        "2 image(s) without a prediction: 1, 2 (the ids match as text: make image_id the same type, string or "
        "integer, in both files)")
    other = write_json(tmp_path / "other_ids.json", [{"image_id": "1", "caption": "a"}, {"image_id": 3, "caption": "b"}])
    with pytest.raises(InputError) as error:
        score_files(coco_files[0], other)
    assert str(error.value).endswith("2 image(s) without a prediction: 1, 2")  # no hint: they differ as text too


@pytest.mark.parametrize("references, message", [
    ({"images": [{"id": 1}]}, "{path}: references must be COCO caption format, an object with 'annotations'"),
    (["annotations"], "{path}: references must be COCO caption format, an object with 'annotations'"),
    ({"annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 2}]},
     "{path}: annotations[1] needs an 'image_id' (string or integer) and a string 'caption', got {{'image_id': 2}}"),
])
def test_malformed_references_are_named_with_the_file(coco_files, tmp_path, references, message):
    path = write_json(tmp_path / "bad_refs.json", references)
    with pytest.raises(InputError) as error:
        score_files(path, coco_files[1])
    assert str(error.value) == message.format(path=path)


def test_a_bad_entry_is_shown_cut_to_200_characters(coco_files, tmp_path):
    entry = {"image_id": 1, "caption": None, "note": "x" * 300}
    path = write_json(tmp_path / "long.json", [entry])
    with pytest.raises(InputError) as error:
        score_files(coco_files[0], path)
    assert str(error.value) == (f"{path}: the top level[0] needs an 'image_id' (string or integer) and a string "
                                f"'caption', got {str(entry)[:200]}")


def test_references_that_cannot_be_read_are_named(coco_files, tmp_path):
    with pytest.raises(InputError) as error:
        score_files(tmp_path / "nowhere.json", coco_files[1])
    assert str(error.value) == f"references file {tmp_path / 'nowhere.json'} not found"
    with pytest.raises(InputError) as error:
        score_files(tmp_path, coco_files[1])  # a folder
    assert str(error.value).startswith(f"references file {tmp_path} could not be read: [Errno 21] Is a directory")


def test_an_image_listed_without_captions_is_named(coco_files, tmp_path):
    references = write_json(tmp_path / "refs2.json", {"images": [{"id": 1}, {"id": 7}],
                                                      "annotations": [{"image_id": 1, "caption": "a dog"}]})
    with pytest.raises(InputError, match=r"refs2.json: 1 image\(s\) in 'images' have no caption .*: 7"):
        score_files(references, coco_files[1])


def test_format_scores_prints_one_row_per_metric():
    table = format_scores({"Bleu_4": 0.35735, "METEOR": 0.28787, "CIDEr": 1.23461})
    assert table.splitlines() == ["Bleu_4  0.3574", "METEOR  0.2879", "CIDEr   1.2346"]


def test_without_java_the_table_marks_meteor_only_when_it_was_asked_for(monkeypatch):
    monkeypatch.setenv(NO_JAVA_ENV, "1")
    scores = {"Bleu_4": 0.35735, "CIDEr": 1.23461}
    marked = ["Bleu_4  0.3574", "CIDEr   1.2346", "METEOR  n/a (Java not found)"]
    assert format_scores(scores).splitlines() == marked
    assert format_scores(scores, ["Bleu", "METEOR"]).splitlines() == marked
    assert format_scores(scores, ["Bleu", "CIDEr"]).splitlines() == marked[:2]
    monkeypatch.setenv(NO_JAVA_ENV, "0")  # "0" is no: Java is used where it is installed
    assert format_scores(scores).splitlines() == (marked[:2] if shutil.which("java") else marked)


def test_java_is_used_where_a_java_is_on_the_path_unless_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv(NO_JAVA_ENV, raising=False)
    assert not java_available()
    fake_java(tmp_path / "bin", "exit 0")
    assert java_available()
    for value, available in [("", True), ("0", True), ("1", False), ("yes", False)]:
        monkeypatch.setenv(NO_JAVA_ENV, value)
        assert java_available() is available, value


# Captions as PTB and trainers.text leave them (lower case, no punctuation), so every tokenizer keeps
# them as they are and pycocoevalcap's scorers can be called on the very same strings.
TOKENIZED_REFERENCES = {
    1: ["a dog runs on the grass", "a brown dog is running outside", "the dog plays in a green field"],
    2: ["a cat sleeps on a red sofa", "the cat is asleep on the couch"],
    3: ["a bus drives down the street", "a red bus on a city road", "a double decker bus in traffic"],
    4: ["a man rides a bike along the beach", "a person cycling near the sea"],
}
TOKENIZED_PREDICTIONS = {1: "a brown dog running on the grass", 2: "a cat sleeping on a red couch",
                         3: "a red bus driving down the street", 4: "a man riding a bike on the beach"}


def pycocoevalcap_scores(references, predictions) -> dict[str, float]:
    """pycocoevalcap's own Bleu, ROUGE and CIDEr, called as COCOEvalCap.evaluate calls them, on tokenized captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {key: list(captions) for key, captions in references.items()}
    res = {key: [predictions[key]] for key in references}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], bleu))
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


def pycocoevalcaps_meteor(references, predictions) -> float:
    """pycocoevalcap's own Meteor (a JVM of its own, ended here), as COCOEvalCap calls it."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        return scorer.compute_score({key: list(captions) for key, captions in references.items()},
                                    {key: [predictions[key]] for key in references})[0]
    finally:
        scorer.meteor_p.kill()
        for stream in (scorer.meteor_p.stdin, scorer.meteor_p.stdout, scorer.meteor_p.stderr):
            stream.close()
        scorer.meteor_p.wait()


@functools.cache
def pycocoevalcaps_seven_scores_of_the_fixed_pairs() -> dict[str, float]:
    """All seven of pycocoevalcap's own scores of TOKENIZED_PREDICTIONS, computed once a session (the
    values do not depend on orch's code; its METEOR JVM takes seconds to start)."""
    scores = pycocoevalcap_scores(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS)
    scores["METEOR"] = pycocoevalcaps_meteor(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS)
    return {name: scores[name] for name in ALL_SCORES}


def rotated(predictions: dict) -> dict:
    """Each image given the next image's prediction."""
    keys = list(predictions)
    return {key: predictions[keys[(index + 1) % len(keys)]] for index, key in enumerate(keys)}


@pytest.mark.parametrize("tokenizer", ["none", "python"])
def test_scores_equal_pycocoevalcaps_own_scorers_on_fixed_pairs(tokenizer):
    scores = score_captions(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS, metrics=["Bleu", "ROUGE_L", "CIDEr"],
                            tokenizer=tokenizer)
    expected = pycocoevalcap_scores(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS)
    assert scores == pytest.approx(expected, abs=1e-12)
    assert 0.3 < scores["Bleu_2"] and 0.5 < scores["CIDEr"]  # pairs that match: not a degenerate corner


@needs_java
def test_all_seven_scores_equal_pycocoevalcaps_own_scorers_through_the_ptb_tokenizer():
    scores = score_captions(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS)
    assert list(scores) == ALL_SCORES
    assert scores == pytest.approx(pycocoevalcaps_seven_scores_of_the_fixed_pairs(), abs=1e-12)


def test_each_prediction_is_scored_against_its_own_images_references():
    """Given the next image's caption, every image scores lower: the pairing is by key, not position."""
    metrics = ["Bleu", "ROUGE_L", "CIDEr"]
    matched = score_captions(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS, metrics=metrics, tokenizer="none")
    mismatched = score_captions(TOKENIZED_REFERENCES, rotated(TOKENIZED_PREDICTIONS), metrics=metrics, tokenizer="none")
    assert mismatched == pytest.approx(pycocoevalcap_scores(TOKENIZED_REFERENCES, rotated(TOKENIZED_PREDICTIONS)),
                                       abs=1e-12)
    for name in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert mismatched[name] < matched[name], name
    assert mismatched["CIDEr"] < matched["CIDEr"] / 3
    listed_backwards = dict(reversed(TOKENIZED_PREDICTIONS.items()))
    assert score_captions(TOKENIZED_REFERENCES, listed_backwards, metrics=metrics, tokenizer="none") == matched


def karpathy_sample(images: int = 200) -> tuple[dict, dict]:
    """The first images of the COCO Karpathy test fixture, captions lower-cased to their words."""
    folder = fixture_dir("coco_karpathy_test_eval")
    words = lambda caption: " ".join(re.findall(r"[a-z0-9]+", caption.lower()))  # noqa: E731
    references: dict[str, list[str]] = {}
    for entry in json.loads((folder / "image_caption_gt.json").read_text(encoding="utf-8"))["annotations"]:
        if entry["image_id"] in references or len(references) < images:
            references.setdefault(entry["image_id"], []).append(words(entry["caption"]))
    predictions = {entry["image_id"]: words(entry["caption"])
                   for entry in json.loads((folder / "image_caption_prediction.json").read_text(encoding="utf-8"))
                   if entry["image_id"] in references}
    return references, predictions


def test_a_real_models_coco_captions_score_as_pycocoevalcap_scores_them_and_lower_on_other_images():
    references, predictions = karpathy_sample()
    metrics = ["Bleu", "ROUGE_L", "CIDEr"]
    matched = score_captions(references, predictions, metrics=metrics, tokenizer="none")
    assert matched == pytest.approx(pycocoevalcap_scores(references, predictions), abs=1e-12)
    assert matched["CIDEr"] > 0.8  # the model scores 1.23 on all 5000 images
    mismatched = score_captions(references, rotated(predictions), metrics=metrics, tokenizer="none")
    assert mismatched["CIDEr"] < 0.2 and mismatched["Bleu_4"] < matched["Bleu_4"] / 2


def test_score_files_scores_as_pycocoevalcap_whatever_order_the_files_list_images_in(tmp_path, monkeypatch):
    monkeypatch.setenv(NO_JAVA_ENV, "1")  # the python tokenizer leaves these captions as they are
    references = write_json(tmp_path / "refs.json", {
        "images": [{"id": key} for key in TOKENIZED_REFERENCES],
        "annotations": [{"image_id": key, "caption": caption, "id": index}
                        for index, (key, caption) in enumerate((key, caption) for key in reversed(TOKENIZED_REFERENCES)
                                                               for caption in TOKENIZED_REFERENCES[key])],
    })
    predictions = write_json(tmp_path / "preds.json", [{"image_id": key, "caption": caption}
                                                       for key, caption in reversed(TOKENIZED_PREDICTIONS.items())])
    with pytest.warns(RuntimeWarning, match="Java not found"):
        scores = score_files(references, predictions)
    assert scores == pytest.approx(pycocoevalcap_scores(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS), abs=1e-12)

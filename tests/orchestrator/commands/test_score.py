"""`orch score` as a user runs it: what it prints and its exit codes."""

import json

import pytest

from trainers.metrics import java_available

pytestmark = pytest.mark.usefixtures("meteor_freed_after_the_module")


@pytest.fixture
def references(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"image_id": 1, "caption": "A dog runs on the grass."},
                        {"image_id": 1, "caption": "A brown dog is running outside."},
                        {"image_id": 2, "caption": "A red bus drives down the street."}],
    }))
    return path


def write_predictions(path, predictions):
    path.write_text(json.dumps([{"image_id": image_id, "caption": caption} for image_id, caption in predictions]))
    return path


@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_json_flag_prints_one_object_with_all_seven_scores(orch, references, tmp_path):
    predictions = write_predictions(tmp_path / "preds.json", [(1, "a dog running on grass"), (2, "a red bus")])
    result = orch("score", "--references", references, "--predictions", predictions, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    assert all(0.0 <= value <= 10.0 for value in scores.values())


def test_without_json_prints_a_table_of_the_chosen_metrics(orch, references, tmp_path):
    predictions = write_predictions(tmp_path / "preds.json", [(1, "a dog running on grass"), (2, "a red bus")])
    result = orch("score", "--references", references, "--predictions", predictions, "--metric", "Bleu",
                  "--metric", "CIDEr")
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]


def test_predictions_for_unknown_images_exit_2_listing_them(orch, references, tmp_path):
    predictions = write_predictions(tmp_path / "preds.json",
                                    [(1, "a dog"), (2, "a bus"), (41, "a cat"), (42, "a horse")])
    result = orch("score", "--references", references, "--predictions", predictions, "--json")
    assert result.exit_code == 2
    assert "2 prediction(s) for images without references: 41, 42" in result.output
    assert result.stdout == ""


def test_a_missing_predictions_file_exits_2_naming_it(orch, references, tmp_path):
    missing = tmp_path / "nowhere.json"
    result = orch("score", "--references", references, "--predictions", missing)
    assert result.exit_code == 2
    assert f"predictions file {missing} not found" in result.output


def test_an_unknown_metric_exits_2(orch, references, tmp_path):
    predictions = write_predictions(tmp_path / "preds.json", [(1, "a dog"), (2, "a bus")])
    result = orch("score", "--references", references, "--predictions", predictions, "--metric", "SPICE")
    assert result.exit_code == 2 and "unknown metric(s) 'SPICE'" in result.output


def write_tokenized_pair(tmp_path):
    """References and predictions of already-tokenized captions, each file listing the images in its own order."""
    from tests.trainers.test_metrics import TOKENIZED_PREDICTIONS, TOKENIZED_REFERENCES

    references = tmp_path / "tokenized_refs.json"
    references.write_text(json.dumps({"annotations": [
        {"image_id": key, "caption": caption} for key in sorted(TOKENIZED_REFERENCES, reverse=True)
        for caption in TOKENIZED_REFERENCES[key]]}))
    predictions = write_predictions(tmp_path / "tokenized_preds.json",
                                    sorted(TOKENIZED_PREDICTIONS.items(), key=lambda item: item[1]))
    return references, predictions


def test_json_scores_are_pycocoevalcaps_own_values(orch, tmp_path, monkeypatch):
    """Values, not just keys: Bleu, ROUGE_L and CIDEr as pycocoevalcap's scorers give them (Java or not)."""
    from tests.trainers.test_metrics import TOKENIZED_PREDICTIONS, TOKENIZED_REFERENCES, pycocoevalcap_scores
    from trainers.metrics import NO_JAVA_ENV

    monkeypatch.setenv(NO_JAVA_ENV, "1")
    references, predictions = write_tokenized_pair(tmp_path)
    result = orch("score", "--references", references, "--predictions", predictions, "--json")
    assert result.exit_code == 0, result.output
    expected = pycocoevalcap_scores(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS)
    assert json.loads(result.stdout) == pytest.approx(expected, abs=1e-12)


@pytest.mark.skipif(not java_available(), reason="METEOR needs Java")
def test_json_scores_with_java_are_pycocoevalcaps_own_seven_values(orch, tmp_path):
    from tests.trainers.test_metrics import pycocoevalcaps_seven_scores_of_the_fixed_pairs

    references, predictions = write_tokenized_pair(tmp_path)
    result = orch("score", "--references", references, "--predictions", predictions, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == pytest.approx(pycocoevalcaps_seven_scores_of_the_fixed_pairs(), abs=1e-12)

"""On synthetic scenes: whether snippets land in their object's third, and region captions name it."""

from __future__ import annotations

import pytest

from trainers.alignment.mrf import Snippet
from trainers.alignment.synthetic import alignment_scores, in_third, shape_word_objects

RED_CIRCLE = {"shape": "circle", "color": "red", "size": "large", "position": "left"}
BLUE_CROSS = {"shape": "cross", "color": "blue", "size": "small", "position": "right"}
WORDS = "a large red circle on the left and a small blue cross on the right".split()
BOXES = [[0, 0, 1, 1], [0, 0, 1 / 3, 1], [1 / 3, 0, 2 / 3, 1], [2 / 3, 0, 1, 1]]  # whole image, then thirds


def test_shape_words_name_their_objects_by_colour_and_shape():
    assert shape_word_objects(WORDS, [RED_CIRCLE, BLUE_CROSS]) == {3: RED_CIRCLE, 11: BLUE_CROSS}
    assert shape_word_objects("a green circle".split(), [RED_CIRCLE]) == {}


def test_a_box_is_in_a_third_when_most_of_its_width_is():
    assert in_third([0.0, 0.0, 0.3, 0.5], "left") and not in_third([0.0, 0.0, 1.0, 1.0], "left")
    assert in_third([0.6, 0.2, 0.9, 0.4], "right") and not in_third([0.1, 0.2, 0.4, 0.4], "middle")


def test_alignment_scores_count_the_snippets_that_name_one_object():
    right = [Snippet(0, 7, 1), Snippet(7, 14, 3)]  # each object's snippet on its own third
    wrong = [Snippet(0, 7, 3), Snippet(7, 14, 0)]  # the circle on the right, the cross on the whole image
    both = [Snippet(0, 14, 1)]  # names two objects: not counted
    scores = alignment_scores([(WORDS, right, BOXES, [RED_CIRCLE, BLUE_CROSS]),
                               (WORDS, wrong, BOXES, [RED_CIRCLE, BLUE_CROSS]),
                               (WORDS, both, BOXES, [RED_CIRCLE, BLUE_CROSS])],
                              region_captions=[["large red circle on the left", "a small blue cross"],
                                               ["a blue cross", "a red circle"], ["a red circle"]])
    assert scores["snippet_accuracy"] == 0.5
    assert scores["snippet_accuracy_chance"] == pytest.approx(0.25)  # one of four boxes per object
    assert scores["region_caption_accuracy"] == 0.5
    assert scores["mean_snippet_words"] == pytest.approx(42 / 5)

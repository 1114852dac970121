"""How well snippets land on their objects, on `orch synth` data, whose ground truth says which
third of the image (left, middle, right) holds each object."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from trainers.alignment.mrf import Snippet
from trainers.data.synthetic import COLORS, POSITIONS, SHAPES, named_objects


def shape_word_objects(words: Sequence[str], objects: Sequence[dict]) -> dict[int, dict]:
    """Word index of each shape word -> the ground-truth object it names (its colour is the colour
    word before it; no two objects of an image share both colour and shape)."""
    found, color = {}, None
    for index, word in enumerate(words):
        if word in COLORS:
            color = word
        elif word in SHAPES:
            match = [o for o in objects if (o["color"], o["shape"]) == (color, word)]
            if len(match) == 1:
                found[index] = match[0]
            color = None
    return found


def snippet_object(snippet: Snippet, named: dict[int, dict]) -> dict | None:
    """The object a snippet is about: the one named by the only shape word it holds, else None."""
    inside = [named[i] for i in range(snippet.start, snippet.end) if i in named]
    return inside[0] if len(inside) == 1 else None


def in_third(box: Sequence[float], position: str) -> bool:
    """Whether most of the box's width lies in that third of the image."""
    third = list(POSITIONS).index(position)
    x0, x1 = box[0], box[2]
    overlap = max(0.0, min(x1, (third + 1) / 3) - max(x0, third / 3))
    return overlap > (x1 - x0) / 2


def names_only(caption: str, item: dict) -> bool:
    """Whether a caption names this object (colour and shape) and no other."""
    return named_objects(caption) == Counter({(item["color"], item["shape"]): 1})


def alignment_scores(sentences: Sequence[tuple[list[str], list[Snippet], list[list[float]], list[dict]]],
                     region_captions: Sequence[list[str]] | None = None) -> dict[str, float]:
    """Over the snippets that name one object (by its shape word), for sentences given as (words,
    snippets, boxes of the image's fragments, ground-truth objects):

    - snippet_accuracy: the fraction aligned to a region lying in that object's third;
    - snippet_accuracy_chance: the same for a region drawn at random among the image's fragments;
    - region_caption_accuracy (with region captions, one per snippet): the fraction whose region's
      caption names that object and no other;
    - mean_snippet_words: the mean number of words of every snippet.
    """
    counted = right = chance = captioned = 0.0
    words_per_snippet = []
    for index, (words, pieces, boxes, objects) in enumerate(sentences):
        named = shape_word_objects(words, objects)
        for piece_index, piece in enumerate(pieces):
            words_per_snippet.append(piece.end - piece.start)
            item = snippet_object(piece, named)
            if item is None:
                continue
            counted += 1
            right += in_third(boxes[piece.region], item["position"])
            chance += sum(in_third(box, item["position"]) for box in boxes) / len(boxes)
            if region_captions is not None:
                captioned += names_only(region_captions[index][piece_index], item)
    scores = {"mean_snippet_words": sum(words_per_snippet) / max(len(words_per_snippet), 1)}
    if counted:
        scores.update(snippet_accuracy=right / counted, snippet_accuracy_chance=chance / counted)
        if region_captions is not None:
            scores["region_caption_accuracy"] = captioned / counted
    return scores

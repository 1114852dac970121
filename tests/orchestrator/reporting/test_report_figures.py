"""`orch report`'s figures are readable: no two pieces of text overlap and none is cut by the edge.

Every figure the report makes is drawn as `orch report` would save it, and the window extent of every
text matplotlib actually draws (titles, axis labels, tick labels, legend entries, annotations,
colour-bar labels) is measured. The result sets are realistic stores written as `orch run` writes
them: one seed over four encoders with long names and four β; three seeds over the
scheduled-sampling rate and β; an Optuna-style search over the hpo.yaml space.
"""

from __future__ import annotations

import itertools

import pytest
from matplotlib.collections import LineCollection
from matplotlib.text import Text

from orchestrator.reporting.report import collect, figures
from tests.orchestrator.reporting.test_report import record_experiment

TOLERANCE = 1.0  # pixels: anti-aliased edges may touch


def one_seed(tmp_path_factory):
    grid = {"model.encoder": ["mobilenet_v3_large", "regnet_x_400mf", "resnet101", "vgg16_bn"],
            "decode.length_penalty": [0.0, 0.5, 1.0, 1.5]}
    scores = {"mobilenet_v3_large": 0.41, "regnet_x_400mf": 0.45, "resnet101": 0.62, "vgg16_bn": 0.52}
    uri = record_experiment(tmp_path_factory.mktemp("one-seed"), "one-seed", grid, lambda cell: (
        scores[cell["model.encoder"]] + 0.01 * cell["decode.length_penalty"]),
        epochs=1)
    return collect("one-seed", uri)


def three_seeds(tmp_path_factory):
    grid = {"train.scheduled_sampling.max_rate": [0.0, 0.1, 0.25], "train.seed": [0, 1, 2],
            "decode.length_penalty": [0.0, 1.5]}
    uri = record_experiment(tmp_path_factory.mktemp("three-seeds"), "three-seeds", grid, lambda cell: (
        0.55 + 0.2 * cell["train.scheduled_sampling.max_rate"] + 0.01 * cell["train.seed"]
        - 0.02 * cell["decode.length_penalty"]), epochs=2)
    return collect("three-seeds", uri)


def search(tmp_path_factory):
    space = {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}, "model.dropout": {"uniform": [0.1, 0.6]},
             "model.attention_dim": {"choice": [256, 512, 1024]}, "train.alpha_c": {"uniform": [0.0, 2.0]}}
    samples = tuple({"train.lr": lr, "model.dropout": dropout, "model.attention_dim": dim, "train.alpha_c": alpha}
                    for lr, dropout, dim, alpha in [(1.2e-5, 0.1, 256, 0.0), (3.4e-4, 0.5, 512, 1.0),
                                                    (8.9e-4, 0.3, 1024, 2.0), (5.0e-5, 0.6, 512, 0.5),
                                                    (2.0e-4, 0.2, 256, 1.5)])
    uri = record_experiment(tmp_path_factory.mktemp("search"), "search", {}, lambda cell: (
        0.2 + 500 * cell["train.lr"] - 0.1 * cell["model.dropout"]), epochs=1,
        search={"num_samples": len(samples), "space": space}, samples=samples)
    return collect("search", uri)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict[str, tuple]:
    """'<result set>/<figure>' -> (figure, the (text, window extent) of every text drawn on it)."""
    made = {}
    for result_set in (one_seed, three_seeds, search):
        for key, (_, figure) in figures(result_set(tmp_path_factory)).items():
            made[f"{result_set.__name__}/{key}"] = (figure, _draw(figure))
    return made


def _draw(figure) -> list[tuple[str, object]]:
    """Draw the figure and record the extent of each text matplotlib actually renders (tick labels off
    the axis' limits are never drawn, so they are never measured)."""
    texts = []
    original = Text.draw

    def recording(text, renderer):
        original(text, renderer)
        if text.get_visible() and text.get_text().strip():
            texts.append((text.get_text(), text.get_window_extent(renderer)))

    Text.draw = recording
    try:
        figure.canvas.draw()
    finally:
        Text.draw = original
    return texts


def test_the_report_makes_every_figure_the_result_sets_call_for(drawn):
    assert sorted(drawn) == [
        "one_seed/decode.length_penalty", "one_seed/learning", "one_seed/model.encoder",
        "search/learning", "search/search",
        "three_seeds/decode.length_penalty", "three_seeds/learning", "three_seeds/train.scheduled_sampling.max_rate"]


def test_no_two_texts_overlap(drawn):
    for name, (_, texts) in drawn.items():
        for (text_a, a), (text_b, b) in itertools.combinations(texts, 2):
            width = min(a.x1, b.x1) - max(a.x0, b.x0)
            height = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert width <= TOLERANCE or height <= TOLERANCE, f"{name}: {text_a!r} overlaps {text_b!r}"


def test_every_text_lies_inside_the_figure(drawn):
    for name, (figure, texts) in drawn.items():
        box = figure.bbox
        for text, extent in texts:
            assert (extent.x0 >= box.x0 - TOLERANCE and extent.x1 <= box.x1 + TOLERANCE
                    and extent.y0 >= box.y0 - TOLERANCE and extent.y1 <= box.y1 + TOLERANCE), f"{name}: {text!r} is cut"


def test_error_bars_and_their_words_appear_only_with_several_seeds(drawn):
    for name in ("one_seed/model.encoder", "three_seeds/decode.length_penalty"):
        figure, _ = drawn[name]
        several = name.startswith("three_seeds")
        title = figure.get_suptitle()
        assert ("mean ± 95 % CI over 3 seeds" in title) == several and ("one seed, no error bars" in title) != several
        for ax in figure.axes:
            assert any(isinstance(c, LineCollection) for c in ax.collections) == several


def test_long_level_names_are_shown_whole_under_their_bars(drawn):
    _, texts = drawn["one_seed/model.encoder"]
    shown = {text.replace("\n", "") for text, _ in texts}
    assert {"mobilenet_v3_large", "regnet_x_400mf", "resnet101", "vgg16_bn"} <= shown

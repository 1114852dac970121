"""The report's figures: a metric by the levels of one factor, learning curves, and the parallel
coordinates of search samples.

Plain data in, a matplotlib Figure out (so a test can measure its text before it is saved);
`save` writes the PNG. Agg backend, so no display is needed. Every figure uses constrained layout
and short axis labels; what the error bars mean goes in the title, where it has room.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

Point = tuple[float, float, float]  # x, mean, error-bar half-width
WRAP = 12  # characters per line of a level name under a bar
DPI = 110


@dataclass
class Panel:
    """One metric against the levels of a factor; `errors` are None when there is one seed."""

    y_label: str
    levels: list[str]
    means: list[float]
    errors: Optional[list[float]]


def factor_figure(title: str, x_label: str, panels: list[Panel], numeric: bool) -> Figure:
    """One panel per metric: a line over a numeric factor's values, bars over a categorical one's."""
    levels = panels[0].levels
    width = max(4.6, 1.05 * len(levels) + 1.6) if not numeric else 4.8
    figure, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 4.0), dpi=DPI, squeeze=False,
                               layout="constrained")
    for ax, panel in zip(axes[0], panels):
        if numeric:
            xs = [float(level) for level in panel.levels]
            ax.errorbar(xs, panel.means, yerr=panel.errors, marker="o", capsize=4, linewidth=1.8)
            _level_ticks(ax, xs, panel.levels)
        else:
            positions = range(len(panel.levels))
            ax.bar(positions, panel.means, yerr=panel.errors, capsize=5, color="tab:blue", alpha=0.8, width=0.6)
            ax.set_xticks(list(positions), [_wrap(level, WRAP) for level in panel.levels])
            ax.set_ylim(bottom=0)
        ax.set_xlabel(x_label)
        ax.set_ylabel(panel.y_label)
        ax.yaxis.get_major_formatter().set_useOffset(False)
        ax.grid(alpha=0.3, axis="y" if not numeric else "both")
    figure.suptitle(title)
    return figure


def _level_ticks(ax, xs: list[float], levels: list[str]) -> None:
    """A tick at each level, on a log axis when they span two decades or more; matplotlib's own ticks
    when levels sit too close for their labels to stay apart."""
    log = min(xs) > 0 and max(xs) / min(xs) >= 100
    if log:
        ax.set_xscale("log")
    placed = [math.log10(x) for x in xs] if log else xs
    span = (max(placed) - min(placed)) or 1.0
    closest = min((b - a for a, b in zip(placed, placed[1:])), default=span)
    if closest / span >= 0.02 * (max(len(level) for level in levels) + 1):
        ax.set_xticks(xs, levels)
        ax.xaxis.set_minor_locator(NullLocator())


def learning_curves(title: str, y_label: str, curves: dict[str, list[Point]]) -> Figure:
    """One line per training cell (mean over seeds per epoch) with a band of its error half-width."""
    height = max(4.5, 0.24 * len(curves) + 1.5)
    figure, ax = plt.subplots(figsize=(9.5 if len(curves) > 1 else 6.5, height), dpi=DPI, layout="constrained")
    colours = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for index, (label, points) in enumerate(curves.items()):
        epochs, means, errors = zip(*points)
        colour = colours(index % colours.N)
        style = "-" if index < colours.N else "--"  # past the palette, colours repeat: dash the repeats
        ax.plot(epochs, means, marker="o", markersize=3, linewidth=1.5, color=colour, linestyle=style, label=label)
        ax.fill_between(epochs, [m - e for m, e in zip(means, errors)], [m + e for m, e in zip(means, errors)],
                        color=colour, alpha=0.15, linewidth=0)
    ax.set_title(title)  # over the axes, clear of the legend at their right
    ax.set_xlabel("epoch")
    ax.set_ylabel(y_label)
    epochs = sorted({point[0] for points in curves.values() for point in points})
    if len(epochs) <= 20:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        figure.legend(fontsize=8, loc="outside right upper")
    return figure


@dataclass
class Dimension:
    """One vertical axis of a parallel-coordinates plot: a searched or grid key and how to place its values."""

    label: str
    values: list  # one per sample: floats, or strings for a categorical key
    log: bool = False


def parallel_coordinates(title: str, dimensions: list[Dimension], scores: list[float], score_label: str) -> Figure:
    """Each search sample a line across its keys' axes, coloured by score; drawn worst first so the best
    lie on top, the best one thick and red. Each axis is scaled to its own range, labelled at its ends."""
    figure, ax = plt.subplots(figsize=(max(6.5, 1.9 * len(dimensions) + 2.0), 4.6), dpi=DPI,
                               layout="constrained")
    placed = [_place(d) for d in dimensions]
    colour_map = plt.get_cmap("viridis")
    low, high = min(scores), max(scores)
    span = (high - low) or 1.0
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    for rank, sample in enumerate(order):
        ys = [positions[sample] for positions, _ in placed]
        best = rank == len(order) - 1
        ax.plot(range(len(dimensions)), ys, color="tab:red" if best else colour_map((scores[sample] - low) / span),
                linewidth=3.0 if best else 1.2, alpha=1.0 if best else 0.75, zorder=3 if best else 2)
    for x, (_, ticks) in enumerate(placed):
        ax.axvline(x, color="0.3", linewidth=0.8, zorder=1)
        for y, text in ticks:
            ax.annotate(text, (x, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xticks(range(len(dimensions)), [_wrap(d.label, 16) for d in dimensions])
    ax.set_xlim(-0.1, len(dimensions) - 0.4)
    ax.set_ylim(-0.06, 1.06)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    scale = plt.cm.ScalarMappable(cmap=colour_map, norm=plt.Normalize(low, high))
    figure.colorbar(scale, ax=ax, label=score_label)
    figure.suptitle(title)
    return figure


def _wrap(text: str, width: int) -> str:
    """Lines of at most `width` characters, broken after an underscore where one is near (mobilenet_v3_ / large)."""
    return textwrap.fill(text.replace("_", "_ "), width).replace("_ ", "_")


def _place(dimension: Dimension) -> tuple[list[float], list[tuple[float, str]]]:
    """Each sample's height in [0, 1] on this axis, and the (height, text) labels the axis carries."""
    try:
        numbers = [float(v) for v in dimension.values]
    except ValueError:
        levels = list(dict.fromkeys(dimension.values))
        step = 1.0 / max(1, len(levels) - 1)
        heights = {level: (index * step if len(levels) > 1 else 0.5) for index, level in enumerate(levels)}
        labels = [(height, level if len(level) <= 14 else level[:13] + "…") for level, height in heights.items()]
        return [heights[v] for v in dimension.values], labels
    scaled = [math.log10(n) for n in numbers] if dimension.log else numbers
    low, high = min(scaled), max(scaled)
    if high == low:
        return [0.5] * len(numbers), [(0.5, f"{numbers[0]:.4g}")]
    heights = [(s - low) / (high - low) for s in scaled]
    return heights, [(0.0, f"{min(numbers):.4g}"), (1.0, f"{max(numbers):.4g}")]


def save(figure: Figure, out: Path) -> Path:
    """Write the figure as a PNG and free it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI)
    plt.close(figure)
    return out

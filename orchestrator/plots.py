"""The report's figures: metric-vs-factor lines with seed error bars, and learning curves.

Plain data in, one PNG out; matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

Point = tuple[float, float, float]  # x, mean, std over seeds


@dataclass
class Panel:
    y_label: str
    series: dict[str, list[Point]]  # legend label -> points, x ascending


def factor_lines(out: Path, title: str, x_label: str, panels: list[Panel]) -> Path:
    """One panel per metric: mean ± std (error bars) against a numeric factor, one line per series."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        all_x = sorted({x for points in panel.series.values() for x, _, _ in points})
        dodge = 0.012 * ((all_x[-1] - all_x[0]) or 1.0)  # series side by side, so their error bars stay apart
        for index, (label, points) in enumerate(panel.series.items()):
            xs, means, stds = zip(*points)
            shift = (index - (len(panel.series) - 1) / 2) * dodge
            ax.errorbar([x + shift for x in xs], means, yerr=stds, marker="o", capsize=4, linewidth=1.8, label=label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(panel.y_label)
        ax.set_xticks(all_x)
        ax.grid(alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=9)
    figure.suptitle(title)
    return _save(figure, out)


def learning_curves(out: Path, title: str, y_label: str, curves: dict[str, list[Point]]) -> Path:
    """One line per training cell (mean over seeds per epoch) with a ± std band."""
    figure, ax = plt.subplots(figsize=(9.0 if len(curves) > 4 else 6.5, 4.5), layout="constrained")
    colours = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for index, (label, points) in enumerate(curves.items()):
        epochs, means, stds = zip(*points)
        colour = colours(index % colours.N)
        ax.plot(epochs, means, marker="o", markersize=3, linewidth=1.5, color=colour, label=label)
        ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(y_label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(figure, out)


def _save(figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out

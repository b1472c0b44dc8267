"""The report's figures, as PNG files (matplotlib, Agg backend, imported only when a figure is drawn).

    from bitfit.report.figures import plot_group_curves, group_slug
    plot_group_curves(group, Path("report/figures") / f"curves_{group_slug(group)}.png")

    plot_group_curves     dev main metric per epoch of a group, one line per learning rate
    plot_bias_change      BitFit: mean |b_final - b_initial| per bias role (rows) and layer (columns)
    plot_layer_distance   full fine-tuning: ||W_ft - W_0|| / ||W_0|| per encoder part
    plot_data_size        main metric against the training-set size, one line per method

(``bitfit.plots.plot_learning_curves`` draws one run's curves; this module draws a group's.)
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import io
from ..methods import BIAS_ROLES
from .groups import MeanStd, RunGroup, group_name
from .tables import bias_axes, seeds_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> None:
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    _pyplot().close(fig)


def slug(*parts: object) -> str:
    """A file-name-safe join: ``slug("minilm", "full", "rte", "bitfit (query)")`` -> ``minilm_full_rte_bitfit_query``."""
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def model_slug(model: str) -> str:
    """A local model folder by its last name; a hub id as it is."""
    return Path(model).name if "/" in model and Path(model).expanduser().exists() else model


def group_slug(g: RunGroup) -> str:
    n = "full" if g.key.max_train_samples is None else f"n{g.key.max_train_samples}"
    return slug(model_slug(g.key.model), n, g.key.task, g.key.method)


def part_label(part: str) -> str:
    """An encoder part as the axes name it: layers from 1, ``emb`` for the embeddings."""
    return str(int(part) + 1) if part.isdigit() else {"embeddings": "emb"}.get(part, part)


def _epoch_means(runs: list, split: str, metric: str) -> dict[int, float]:
    """Epoch -> mean of ``metric`` on ``split`` over the runs' metrics.jsonl rows."""
    per_epoch: dict[int, list[float]] = {}
    for r in runs:
        for row in r.history:
            if row.get("split") == split and row.get(metric) is not None:
                per_epoch.setdefault(int(row["epoch"]), []).append(float(row[metric]))
    return {e: sum(v) / len(v) for e, v in sorted(per_epoch.items())}


def plot_group_curves(g: RunGroup, path: Path) -> None:
    """Dev main metric per epoch: one line per learning rate (mean over its seeds), the chosen one bold."""
    from matplotlib.ticker import MaxNLocator

    task = g.task
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for lr, runs in g.by_lr.items():
        means = _epoch_means(runs, task.main_dev_split, task.main_metric)
        chosen = lr == g.lr
        ax.plot(list(means), [100 * v for v in means.values()], marker="o", lw=2.5 if chosen else 1,
                alpha=1 if chosen else 0.6, label=f"lr {lr:g} ({seeds_text(len(runs))})" + (" chosen" if chosen else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=f"{task.main_dev_split} {task.main_metric} (×100)", title=group_name(g.key))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_png(fig, path)


def plot_bias_change(change: dict[tuple[str, int], float], path: Path, title: str) -> None:
    import numpy as np

    roles, layers = bias_axes(change)
    grid = np.full((len(roles), len(layers)), np.nan)
    for (role, layer), v in change.items():
        grid[roles.index(role), layers.index(layer)] = v
    fig, ax = _pyplot().subplots(figsize=(4.0 + 0.5 * len(layers), 1.6 + 0.4 * len(roles)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(layers)), [str(i + 1) for i in layers])
    ax.set_yticks(range(len(roles)), [BIAS_ROLES[r] for r in roles])
    ax.set_xlabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean |b_final - b_initial|")
    _save_png(fig, path)


def plot_layer_distance(dist: dict[str, tuple[float, float]], path: Path, title: str) -> None:
    parts = list(dist)
    fig, ax = _pyplot().subplots(figsize=(3.5 + 0.4 * len(parts), 3.5))
    ax.bar(range(len(parts)), [dist[p][0] for p in parts], color="tab:blue")
    ax.set_xticks(range(len(parts)), [part_label(p) for p in parts], rotation=45 if len(parts) > 14 else 0)
    ax.set(xlabel="encoder part", ylabel="||W_ft - W_0|| / ||W_0||")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _save_png(fig, path)


def plot_data_size(lines: dict[str, list[tuple[int, MeanStd]]], path: Path, title: str, ylabel: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for method, points in lines.items():
        xs = [x for x, _ in points]
        ax.errorbar(xs, [100 * s.mean for _, s in points], yerr=[100 * (s.std or 0.0) for _, s in points],
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    sizes = sorted({x for points in lines.values() for x, _ in points})
    ax.set_xticks(sizes, [f"{x:,}" for x in sizes])
    ax.minorticks_off()
    ax.set(xlabel="training examples", ylabel=ylabel, title=title)
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_png(fig, path)

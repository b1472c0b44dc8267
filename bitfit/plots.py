"""Learning curves: training loss and each dev split's metrics per epoch, one PNG."""

from __future__ import annotations

from pathlib import Path

from .io import atomic_write


def plot_learning_curves(history: list[dict], metrics: tuple[str, ...], path: Path, title: str,
                         baselines: dict | None = None) -> None:
    """Loss per split, and each split's metrics with its trivial baseline as a dashed line of the same colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    by_split: dict[str, list[dict]] = {}
    for row in history:
        by_split.setdefault(row["split"], []).append(row)
    for split, rows in by_split.items():
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["loss"] for r in rows], marker="o", label=split)
        if split != "train" or any(m in rows[0] for m in metrics):
            for m in metrics:
                if m in rows[0]:
                    line, = ax_metric.plot(epochs, [r[m] for r in rows], marker="o", label=f"{split} {m}")
                    base = (baselines or {}).get(split, {})
                    if m in base:
                        ax_metric.axhline(base[m], color=line.get_color(), linestyle="--", linewidth=1,
                                          label=f"{split} {m}: {_answer(base)}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_metric.set(xlabel="epoch", ylabel="metric", title="dev metrics (dashed: trivial baseline)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _answer(base: dict) -> str:
    return "constant prediction" if base.get("answer") == "constant" else f"always {base.get('answer')!r}"

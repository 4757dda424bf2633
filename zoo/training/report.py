"""A one-page picture of a training run: loss, accuracy and learning rate per epoch, as a PNG.

matplotlib is imported inside ``save_run_report`` only (Agg canvas, no pyplot), so importing this module, or
``zoo.training``, never pulls matplotlib in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo._io import atomic_write

__all__ = ["save_run_report"]

LOSS_KEYS = (("train_loss", "train loss"), ("eval_loss", "eval loss"))
ACCURACY_KEYS = (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1"))
LR_KEYS = (("lr", "learning rate"),)


def _number(value: Any) -> float | None:
    """``value`` as a finite-or-nan float, or None when it is missing / not a plain number (e.g. a string)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (list, tuple)):  # e.g. one lr per parameter group: plot the first
        return _number(value[0]) if value else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that carry a numeric ``key``; a row without ``epoch`` uses its position + 1."""
    xs, ys = [], []
    for index, row in enumerate(history):
        value = _number(row.get(key))
        if value is None:
            continue
        epoch = _number(row.get("epoch"))
        xs.append(float(index + 1) if epoch is None else epoch)
        ys.append(value)
    return xs, ys


def _panel(ax: Any, history: Sequence[dict[str, Any]], keys: Sequence[tuple[str, str]], ylabel: str) -> list[float]:
    plotted: list[float] = []
    for key, label in keys:
        xs, ys = _series(history, key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
            plotted.extend(ys)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if plotted:
        if len(keys) > 1:
            ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    return plotted


def save_run_report(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write a PNG with three panels (loss: ``train_loss``/``eval_loss``; accuracy: ``top1``/``top5`` and
    ``ema_top1`` when present; learning rate: ``lr``), each against ``epoch``, and return its path.

    ``history`` is the trainer's metric history (one dict per epoch); rows that lack a key are skipped for that
    curve, a row without ``epoch`` is placed at its position (1-based). A learning rate spanning more than two
    decades is drawn on a log axis. The file is written atomically (:func:`zoo._io.atomic_write`), so a reader
    never sees a half-written image; missing parent directories are created.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    history = list(history)

    fig = Figure(figsize=(15, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    _panel(ax_loss, history, LOSS_KEYS, "loss")
    ax_loss.set_title("loss")
    _panel(ax_acc, history, ACCURACY_KEYS, "accuracy (%)")
    ax_acc.set_title("accuracy")
    lrs = _panel(ax_lr, history, LR_KEYS, "learning rate")
    ax_lr.set_title("learning rate")
    finite = [v for v in lrs if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))

"""Every figure of a run (matplotlib Figure objects, Agg; no pyplot state)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve
from sklearn.metrics import roc_curve as sk_roc_curve

from .metrics import confusion
from .vocabulary import CLASSES

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10


def model_colours(names) -> dict[str, str]:
    """One colour per model, the same in every figure of a comparison."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}
FIGURE_DPI = 200  # every logged figure; tracking.RunLogger.log_figure writes an SVG beside each PNG


def _figure(width: float = 5.0, height: float = 4.2) -> Figure:
    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def draw_confusion(ax, y, p, threshold: float, title: str) -> None:
    c = confusion(y, p, threshold)
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1))
    for (i, j), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", fontsize=13, color=colour)
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)


def confusion_matrices(y, p, thresholds: dict[str, float], title: str = "") -> Figure:
    """One panel per threshold (0.5 and the validation-chosen one)."""
    fig = _figure(4.2 * len(thresholds), 4.0)
    axes = fig.subplots(1, len(thresholds), squeeze=False)[0]
    for ax, (name, t) in zip(axes, thresholds.items()):
        draw_confusion(ax, y, p, t, f"{name} {t:.3f}")
    fig.suptitle(f"{title} — test set".strip(" —"))
    return fig


def roc_points(y, p) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = sk_roc_curve(np.asarray(y, dtype=int), np.asarray(p, dtype=np.float64))
    return fpr, tpr


def draw_roc(ax, curves: dict[str, tuple], title: str = "ROC", *, intervals: dict[str, tuple] | None = None,
             operating: dict[str, float] | None = None, colours: dict[str, str] | None = None) -> None:
    """curves: label -> (y, p, auc); intervals: label -> the AUC's (low, high); operating: label -> the threshold
    whose (1 - specificity, sensitivity) is marked; colours: label -> colour (one per model across figures)."""
    for label, (y, p, auc) in curves.items():
        fpr, tpr = roc_points(y, p)
        interval = (intervals or {}).get(label)
        ci = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        line, = ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC {auc:.3f}{ci})", color=(colours or {}).get(label))
        if label in (operating or {}):
            t = operating[label]
            c = confusion(y, p, t)
            x = c["fp"] / max(c["fp"] + c["tn"], 1)
            ax.plot([x], [c["tp"] / max(c["tp"] + c["fn"], 1)], "o", ms=8, mfc="white", c=line.get_color(),
                    label=f"{label} at threshold {t:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)


def roc_curve(curves: dict[str, tuple], title: str = "ROC", **marks) -> Figure:
    """curves: label -> (y, p, auc); marks: `intervals`, `operating` (see draw_roc)."""
    fig = _figure()
    draw_roc(fig.subplots(), curves, title, **marks)
    return fig


def pr_curve(curves: dict[str, tuple], title: str = "Precision–recall") -> Figure:
    """curves: label -> (y, p, average precision)."""
    fig = _figure()
    ax = fig.subplots()
    for label, (y, p, ap) in curves.items():
        precision, recall, _ = precision_recall_curve(np.asarray(y, dtype=int), np.asarray(p, dtype=np.float64))
        line, = ax.step(recall, precision, where="post", lw=2, label=f"{label} (AP {ap:.3f})")
        prevalence = float(np.mean(np.asarray(y, dtype=int)))
        ax.axhline(prevalence, ls="--", lw=1, c=line.get_color(), alpha=0.6,
                   label=f"no skill: prevalence {prevalence:.3f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def calibration(y, p, bins: int = 10, title: str = "Calibration (test)") -> Figure:
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    observed, centres = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    # The images behind each point, binned as calibration_curve bins them (empty bins have no point).
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], p), minlength=bins)
    counts = counts[counts > 0]
    fig = _figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    ax.plot(centres, observed, "o-", lw=2, label="model")
    for k, (x, yv, n) in enumerate(zip(centres, observed, counts)):
        # above and below in turn, so neighbours never overlap; always inside the axes
        above = yv < 0.15 or (yv <= 0.85 and k % 2 == 1)
        ax.annotate(f"n={n}", (x, yv), textcoords="offset points", xytext=(0, 8 if above else -13), ha="center",
                    fontsize=7)
    ax.set_xlabel("predicted P(pneumonia)")
    ax.set_ylabel("observed share with pneumonia")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.04, 1.04)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def draw_curves(ax_loss, ax_acc, history: list[dict], best_epoch: int | None = None) -> None:
    epochs = [row["epoch"] for row in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set_title("loss", fontsize=10)
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train accuracy")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], "o-", label="val accuracy")
    ax_acc.plot(epochs, [r["val_auc"] for r in history], "s--", label="val AUC")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_title("accuracy / AUC", fontsize=10)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        if best_epoch:
            ax.axvline(best_epoch, c="grey", ls=":", lw=1)
        ax.legend(fontsize=8)


def training_curves(history: list[dict], best_epoch: int | None = None, title: str = "") -> Figure:
    fig = _figure(9.0, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    draw_curves(ax_loss, ax_acc, history, best_epoch)
    fig.suptitle(f"{title} training curves (dotted: restored best epoch)".strip())
    return fig

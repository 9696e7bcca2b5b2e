"""Every figure of a run (matplotlib Figure objects, Agg; no pyplot state)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve
from sklearn.metrics import roc_curve as sk_roc_curve

from .metrics import confusion

NOTICE = "research use, not for diagnosis"
CLASS_NAMES = ("NORMAL", "PNEUMONIA")


def _figure(width: float = 5.0, height: float = 4.2) -> Figure:
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def draw_confusion(ax, y, p, threshold: float, title: str) -> None:
    c = confusion(y, p, threshold)
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(matrix.max(), 1))
    for (i, j), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", fontsize=13, color=colour)
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)


def confusion_matrices(y, p, thresholds: dict[str, float], title: str = "") -> Figure:
    """One panel per threshold (0.5 and the validation-chosen one)."""
    fig = _figure(4.2 * len(thresholds), 4.0)
    axes = fig.subplots(1, len(thresholds), squeeze=False)[0]
    for ax, (name, t) in zip(axes, thresholds.items()):
        draw_confusion(ax, y, p, t, f"{name} (threshold {t:.2f})")
    fig.suptitle(f"{title} — test set".strip(" —"))
    return fig


def roc_points(y, p) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = sk_roc_curve(np.asarray(y, dtype=int), np.asarray(p, dtype=np.float64))
    return fpr, tpr


def draw_roc(ax, curves: dict[str, tuple], title: str = "ROC") -> None:
    for label, (y, p, auc) in curves.items():
        fpr, tpr = roc_points(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)


def roc_curve(curves: dict[str, tuple], title: str = "ROC") -> Figure:
    """curves: label -> (y, p, auc)."""
    fig = _figure()
    draw_roc(fig.subplots(), curves, title)
    return fig


def pr_curve(curves: dict[str, tuple], title: str = "Precision–recall") -> Figure:
    """curves: label -> (y, p, average precision)."""
    fig = _figure()
    ax = fig.subplots()
    for label, (y, p, ap) in curves.items():
        precision, recall, _ = precision_recall_curve(np.asarray(y, dtype=int), np.asarray(p, dtype=np.float64))
        ax.step(recall, precision, where="post", lw=2, label=f"{label} (AP {ap:.3f})")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower left", fontsize=8)
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
    for x, yv, n in zip(centres, observed, counts):
        ax.annotate(str(n), (x, yv), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("predicted P(pneumonia)")
    ax.set_ylabel("observed share with pneumonia")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
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

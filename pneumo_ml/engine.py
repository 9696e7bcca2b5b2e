"""Plain PyTorch training and evaluation (torchvision references' style). Never imports mlflow:
callers receive per-epoch results and checkpoints through `on_epoch_end`."""
from __future__ import annotations

import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .loaders import BatchLoader
from .metrics import roc_auc
from .transforms import BatchTransform
from .vocabulary import VALIDATION_METRICS


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops, nothing is registered."""


class FocalLoss(nn.Module):
    """Lin et al.'s focal loss on softmax outputs, optionally class-weighted."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def make_loss(name: str, class_counts: list[int], gamma: float = 2.0) -> nn.Module:
    """ce (the study's), weighted_ce or focal; the weights are inverse class frequencies of the train split."""
    counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
    weight = counts.sum() / (len(counts) * counts)
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weight)
    if name == "focal":
        return FocalLoss(gamma, weight)
    raise ValueError(f"unknown loss {name!r}")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed); plain float32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def epoch_seed(seed: int, epoch: int) -> int:
    """Every random draw of an epoch derives from (seed, epoch), so a resumed run repeats it exactly."""
    return seed * 1000 + epoch


def train_step(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: nn.Module, *, amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch already on the device: (logits, loss), neither read back to the host."""
    with autocast(x.device, amp):
        logits = model(x)
        loss = loss_fn(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits, loss


def train_one_epoch(model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    transform: BatchTransform, *, epoch: int, seed: int, amp: bool = True,
                    progress: bool = True, sync_every: int = 20) -> dict[str, float]:
    """One pass over the (rank's share of the) training set. Loss and accuracy accumulate on the device and
    are read back every `sync_every` batches, so the GPU is never stalled per step."""
    device = loader.device
    model.train()
    loader.set_epoch(epoch)
    torch.manual_seed(epoch_seed(seed, epoch))
    augment_rng = torch.Generator().manual_seed(epoch_seed(seed, epoch) + 1)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", unit="batch", leave=False, disable=not progress)
    for step, (images, targets) in enumerate(bar, 1):
        logits, loss = train_step(model, transform(images, augment_rng, targets), targets, optimizer, loss_fn, amp=amp)
        total_loss += loss.detach() * len(targets)
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += len(targets)
        if step % sync_every == 0 or step == len(loader):
            _check_finite(total_loss, epoch)
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
    _check_finite(total_loss, epoch)
    loss_sum, right, count = distributed.all_sum([total_loss.item(), float(correct.item()), float(seen)], device)
    return {"loss": loss_sum / max(count, 1), "accuracy": right / max(count, 1), "images": count,
            "seconds": time.perf_counter() - start}


def _check_finite(total_loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(total_loss):
        raise NonFiniteLossError(f"epoch {epoch + 1}: the training loss became {total_loss.item()} "
                                 f"(try a lower --lr)")


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, loss_fn: nn.Module | None, transform: BatchTransform, *,
             amp: bool = True, progress: bool = False, desc: str = "eval") -> dict:
    """Loss, accuracy at 0.5, and P(pneumonia) per image in the data set's order (gathered from every rank)."""
    was_training = model.training
    model.eval()
    device = loader.device
    probs, targets, total_loss = [], [], 0.0
    for images, y in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        with autocast(device, amp):
            logits = model(transform(images)).float()
        if loss_fn is not None:
            total_loss += loss_fn(logits, y).item() * len(y)
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu())
        targets.append(y.cpu())
    model.train(was_training)
    p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros(0)
    t = torch.cat(targets).numpy() if targets else np.zeros(0, dtype=np.int64)
    if loader.world_size > 1:
        p, t, total_loss = _gathered(loader, p, t, total_loss)
    return {"loss": total_loss / max(len(t), 1), "accuracy": float(((p >= 0.5) == t).mean()) if len(t) else 0.0,
            "probs": p, "targets": t}


def _gathered(loader: BatchLoader, probs: np.ndarray, targets: np.ndarray, loss_sum: float):
    """Every rank's share put back in the data set's order."""
    parts = distributed.all_gather((loader.indices().numpy(), probs, targets, loss_sum))
    n = sum(len(part[0]) for part in parts)
    all_probs, all_targets = np.zeros(n), np.zeros(n, dtype=np.int64)
    for index, p, t, _ in parts:
        all_probs[index], all_targets[index] = p, t
    return all_probs, all_targets, sum(part[3] for part in parts)


@dataclass
class FitState:
    """Everything needed to continue training: saved as a weights-only checkpoint each epoch."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = math.nan
    best_state: dict[str, torch.Tensor] | None = None
    stale_epochs: int = 0


def fit(model: nn.Module, train_loader: BatchLoader, val_loader: BatchLoader, optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module, train_transform: BatchTransform, eval_transform: BatchTransform, *, epochs: int,
        seed: int, monitor: str = "val_loss", patience: int = 0, amp: bool = True, progress: bool = True,
        state: FitState | None = None,
        on_epoch_end: Callable[[FitState, dict[str, float]], None] | None = None) -> FitState:
    """Train for `epochs`, early-stop on `monitor`, and restore the best epoch's weights at the end."""
    state = state or FitState()
    sign = -1.0 if VALIDATION_METRICS[monitor] else 1.0  # lower is better after multiplying
    for epoch in range(state.epoch, epochs):
        train = train_one_epoch(model, train_loader, optimizer, loss_fn, train_transform, epoch=epoch,
                                seed=seed, amp=amp, progress=progress)
        val = evaluate(model, val_loader, loss_fn, eval_transform, amp=amp)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "val_loss": val["loss"], "val_accuracy": val["accuracy"],
               "val_auc": roc_auc(val["targets"], val["probs"]),
               "epoch_seconds": train["seconds"], "train_images_per_s": train["images"] / train["seconds"]}
        state.history.append(row)
        state.epoch = epoch + 1
        if progress:
            tqdm.write(epoch_line(row, epochs), file=sys.stderr)  # stays when the epoch's bar is gone
        score = sign * row[monitor]
        if state.best_epoch < 0 or score < sign * state.best_score:
            state.best_epoch, state.best_score, state.stale_epochs = epoch + 1, row[monitor], 0
            state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            state.stale_epochs += 1
        if on_epoch_end:
            on_epoch_end(state, row)
        if patience and state.stale_epochs >= patience:
            break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state


def epoch_line(row: dict[str, float], epochs: int) -> str:
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val AUC {row['val_auc']:.3f}, {row['epoch_seconds']:.1f} s")


def checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, state: FitState) -> dict:
    """A dict of tensors, numbers and strings only: loadable with torch.load(weights_only=True)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": state.epoch,
            "history": state.history, "best_epoch": state.best_epoch, "best_score": state.best_score,
            "best_state": state.best_state, "stale_epochs": state.stale_epochs}


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> FitState:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    return FitState(epoch=saved["epoch"], history=list(saved["history"]), best_epoch=saved["best_epoch"],
                    best_score=saved["best_score"], best_state=saved["best_state"],
                    stale_epochs=saved["stale_epochs"])

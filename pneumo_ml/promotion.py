"""Which registered version deserves `@champion`: decided on a validation metric, never on the test set."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

VALIDATION_METRICS = {"val_auc": True, "val_accuracy": True, "val_loss": False}  # name -> higher is better


@dataclass(frozen=True)
class Candidate:
    version: str
    experiment: str
    run_id: str
    score: float
    val_loss: float = math.nan


@dataclass(frozen=True)
class Decision:
    winner: Candidate | None
    runner_up: Candidate | None
    champion_before: str | None
    promote: bool
    reason: str


def check_metric(metric: str) -> bool:
    """Higher-is-better for a validation metric; a test metric or an unknown one is refused."""
    if metric.startswith("test"):
        raise ConfigError(f"--metric {metric}: promotion chooses on validation metrics only, never on the test set "
                         f"(choose from {', '.join(VALIDATION_METRICS)})")
    if metric not in VALIDATION_METRICS:
        raise ConfigError(f"--metric {metric}: unknown (choose from {', '.join(VALIDATION_METRICS)})")
    return VALIDATION_METRICS[metric]


def rank(candidates: list[Candidate], higher_is_better: bool) -> list[Candidate]:
    """Best first; ties (common with 16 validation images) go to the lower validation loss, then the older
    version, so every process that ranks the same versions agrees."""
    usable = [c for c in candidates if not math.isnan(c.score)]
    sign = -1 if higher_is_better else 1
    return sorted(usable, key=lambda c: (sign * c.score, c.val_loss if not math.isnan(c.val_loss) else math.inf,
                                         int(c.version)))


def decide(candidates: list[Candidate], champion: str | None, *, metric: str, margin: float = 0.0) -> Decision:
    higher = check_metric(metric)
    ranked = rank(candidates, higher)
    if not ranked:
        return Decision(None, None, champion, False, f"no version has a {metric}")
    best = ranked[0]
    current = next((c for c in candidates if c.version == champion), None)
    others = [c for c in ranked if c.version != best.version]
    runner_up = others[0] if others else None
    if current is None or math.isnan(current.score):
        why = "no current champion" if champion is None else f"champion v{champion} has no {metric}"
        return Decision(best, runner_up, champion, True,
                        f"{why}; v{best.version} ({best.experiment}) has the best {metric} {best.score:.4f}")
    if best.version == current.version:
        return Decision(best, runner_up, champion, False,
                        f"v{best.version} ({best.experiment}) is already champion with the best {metric} {best.score:.4f}")
    gain = (best.score - current.score) if higher else (current.score - best.score)
    if gain >= margin and gain > 0:
        return Decision(best, runner_up, champion, True,
                        f"v{best.version} ({best.experiment}) {metric} {best.score:.4f} beats champion v{current.version} "
                        f"({current.score:.4f}) by {gain:.4f} >= margin {margin:g}")
    runner_up = best
    return Decision(current, runner_up, champion, False,
                    f"v{best.version} ({best.experiment}) {metric} {best.score:.4f} does not beat champion "
                    f"v{current.version} ({current.score:.4f}) by the margin {margin:g} (gain {gain:.4f})")

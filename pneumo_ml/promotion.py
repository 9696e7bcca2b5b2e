"""Which registered version deserves `@champion`: decided on a validation metric, never on the test set, and
only among versions whose validation figures were measured on the same split as each other and as the
current champion's (a figure on 4 validation images does not outrank one on 16)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .errors import ConfigError
from .vocabulary import VALIDATION_METRICS

# Version tags that make two validation figures comparable: written at registration, read by promotion.
SPLIT_DIGEST_TAG = "split_digest"      # content digest of the split: every image, label and split name
IMAGE_SIZE_TAG = "image_size"
SPLIT_SIZES_TAG = "split_sizes"        # "train/val/test" image counts
VAL_PREVALENCE_TAG = "val_prevalence"  # share of PNEUMONIA images in the validation split
COMPARABILITY_TAGS = (SPLIT_DIGEST_TAG, IMAGE_SIZE_TAG, SPLIT_SIZES_TAG, VAL_PREVALENCE_TAG)
_WHAT = {SPLIT_DIGEST_TAG: "split digest", IMAGE_SIZE_TAG: "image size", SPLIT_SIZES_TAG: "split sizes",
         VAL_PREVALENCE_TAG: "validation prevalence"}


def comparability_tags(split_digest: str, image_size: int, sizes: dict[str, int], val_prevalence: float) -> dict:
    """The version tags of COMPARABILITY_TAGS, formatted once so that equal splits give equal strings."""
    return {SPLIT_DIGEST_TAG: split_digest, IMAGE_SIZE_TAG: str(int(image_size)),
            SPLIT_SIZES_TAG: "/".join(str(int(sizes[k])) for k in ("train", "val", "test")),
            VAL_PREVALENCE_TAG: f"{val_prevalence:.4f}"}


def split_of(tags: dict) -> tuple[str, ...] | None:
    """The comparability key of a version's tags; None when it lacks any of them (registered before they
    existed, or by hand)."""
    if not all(tags.get(k) for k in COMPARABILITY_TAGS):
        return None
    return tuple(str(tags[k]) for k in COMPARABILITY_TAGS)


@dataclass(frozen=True)
class Candidate:
    version: str
    experiment: str
    run_id: str
    score: float
    val_loss: float = math.nan
    split: tuple[str, ...] | None = None  # split_of(its tags)


@dataclass(frozen=True)
class Decision:
    winner: Candidate | None
    runner_up: Candidate | None
    champion_before: str | None
    promote: bool
    reason: str


@dataclass(frozen=True)
class ExperimentRank:
    experiment: str
    mean_score: float
    mean_val_loss: float
    members: list[Candidate]  # best first


def check_metric(metric: str) -> bool:
    """Higher-is-better for a validation metric; a test metric or an unknown one is refused."""
    if metric.startswith("test"):
        raise ConfigError(f"--metric {metric}: promotion chooses on validation metrics only, never on the test set "
                         f"(choose from {', '.join(VALIDATION_METRICS)})")
    if metric not in VALIDATION_METRICS:
        raise ConfigError(f"--metric {metric}: unknown (choose from {', '.join(VALIDATION_METRICS)})")
    return VALIDATION_METRICS[metric]


def _loss_key(value: float) -> float:
    return value if not math.isnan(value) else math.inf


def rank(candidates: list[Candidate], higher_is_better: bool) -> list[Candidate]:
    """Best first; ties (common with 16 validation images) go to the lower validation loss, then the older
    version, so every process that ranks the same versions agrees."""
    usable = [c for c in candidates if not math.isnan(c.score)]
    sign = -1 if higher_is_better else 1
    return sorted(usable, key=lambda c: (sign * c.score, _loss_key(c.val_loss), int(c.version)))


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def rank_experiments(candidates: list[Candidate], higher_is_better: bool) -> list[ExperimentRank]:
    """Experiments best first by the mean of the metric over their seeds (one candidate per seed), ties to the
    lower mean validation loss: a lucky seed does not make an experiment the winner."""
    names = list(dict.fromkeys(c.experiment for c in candidates))
    groups = [ExperimentRank(name, _nanmean([c.score for c in members]), _nanmean([c.val_loss for c in members]),
                             rank(members, higher_is_better))
              for name in names for members in [[c for c in candidates if c.experiment == name]]]
    sign = -1 if higher_is_better else 1
    usable = [g for g in groups if not math.isnan(g.mean_score)]
    return sorted(usable, key=lambda g: (sign * g.mean_score, _loss_key(g.mean_val_loss), names.index(g.experiment)))


def _differences(c: Candidate, anchor: Candidate) -> str:
    if c.split is None:
        return "no split tags"
    parts = []
    for name, mine, theirs in zip(COMPARABILITY_TAGS, c.split, anchor.split):
        if mine != theirs:
            parts.append(f"another {_WHAT[name]}" if name == SPLIT_DIGEST_TAG
                         else f"{_WHAT[name]} {mine}, not {theirs}")
    return ", ".join(parts)


def comparable(candidates: list[Candidate], current: Candidate | None) -> tuple[list[Candidate], str]:
    """The candidates whose validation figures can be ranked together, and a sentence on what was left out:
    those on the champion's split; without a champion, those on the newest version's split."""
    tagged = [c for c in candidates if c.split is not None]
    if current is not None and current.split is None:
        return [current], (f"champion v{current.version} has no split tags, so no version is comparable with it "
                           "(move the alias by hand to replace it)")
    if current is not None:
        anchor, scope, named = current, "", f"champion v{current.version}"
    elif tagged:
        anchor = max(tagged, key=lambda c: int(c.version))
        scope = f"no current champion: candidates are those of the newest split (v{anchor.version}'s)"
        named = f"v{anchor.version}"
    else:
        return [], "no version carries split tags, so none is comparable"
    pool = [c for c in candidates if c.split == anchor.split]
    left = sorted((c for c in candidates if c.split != anchor.split), key=lambda c: int(c.version))
    if not left:
        return pool, scope
    listing = "; ".join(f"v{c.version} ({_differences(c, anchor)})" for c in left)
    return pool, _sentence(scope, f"left out as not comparable with {named}: {listing}")


def _best_two(pool: list[Candidate], higher: bool, by_experiment: bool) -> tuple[Candidate | None, Candidate | None,
                                                                                  str]:
    if not by_experiment:
        ranked = rank(pool, higher)
        return (ranked[0] if ranked else None), (ranked[1] if len(ranked) > 1 else None), ""
    experiments = rank_experiments(pool, higher)
    if not experiments:
        return None, None, ""
    first = experiments[0]
    runner_up = experiments[1].members[0] if len(experiments) > 1 else \
        (first.members[1] if len(first.members) > 1 else None)
    why = (f"{first.experiment} has the best mean over its {len(first.members)} version(s) "
           f"({first.mean_score:.4f}); ")
    return first.members[0], runner_up, why


def _sentence(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def decide(candidates: list[Candidate], champion: str | None, *, metric: str, margin: float = 0.0,
           experiments: dict[str, str] | None = None) -> Decision:
    """The promotion decision among comparable candidates. `experiments` (version -> experiment name, a suite's
    own versions) makes only those versions contenders and ranks experiments by their mean over seeds; the
    champion is still looked up among all candidates."""
    higher = check_metric(metric)
    current = next((c for c in candidates if c.version == champion), None)
    field = candidates if experiments is None else \
        [c for c in candidates if c.version in experiments or c is current]
    pool, scope = comparable(field, current)
    if experiments is not None:
        pool = [replace(c, experiment=experiments[c.version]) for c in pool if c.version in experiments]
    best, runner_up, why = _best_two(pool, higher, by_experiment=experiments is not None)
    if best is None:
        return Decision(None, None, champion, False, _sentence(f"no comparable version has a {metric}", scope))
    if current is None or math.isnan(current.score):
        state = "" if current is None else f"champion v{champion} has no {metric}"
        return Decision(best, runner_up, champion, True, _sentence(
            state, f"{why}v{best.version} ({best.experiment}) has the best {metric} {best.score:.4f}", scope))
    if best.version == current.version:
        return Decision(best, runner_up, champion, False, _sentence(
            f"v{best.version} ({best.experiment}) is already champion with the best comparable {metric} "
            f"{best.score:.4f}", scope))
    gain = (best.score - current.score) if higher else (current.score - best.score)
    if gain >= margin and gain > 0:
        return Decision(best, runner_up, champion, True, _sentence(
            f"{why}v{best.version} ({best.experiment}) {metric} {best.score:.4f} beats champion v{current.version} "
            f"({current.score:.4f}) by {gain:.4f} >= margin {margin:g}", scope))
    return Decision(current, best, champion, False, _sentence(
        f"{why}v{best.version} ({best.experiment}) {metric} {best.score:.4f} does not beat champion "
        f"v{current.version} ({current.score:.4f}) by the margin {margin:g} (gain {gain:.4f})", scope))

"""The study's four experiments as child runs of one parent run: one split, one decoded-image cache, compared
with intervals and paired tests, every model registered, the validation winner promoted."""
from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from . import comparison, devices, tracking
from . import config as config_mod
from .baseline import IntensityBaseline
from .config import Config, experiment_name, seed_suffix
from .ensemble import NAME as ENSEMBLE_NAME
from .ensemble_run import build_ensemble
from .errors import ConfigError
from .metrics import roc_auc, youden_threshold
from .promotion import Candidate, check_metric, rank_experiments
from .timing import stage
from .train import ExperimentResult, PreparedData, prepare_data, run_experiment
from .vocabulary import PROMOTION_DEFAULTS

log = logging.getLogger(__name__)
SUITE_KEYS = {"experiments", "seeds", "protocol", "promotion", "quick", "ensemble"}
PROMOTION_KEYS = {"metric", "margin", "alias", "challenger"}


@dataclass(frozen=True)
class SuiteConfig:
    experiments: tuple[str, ...]
    seeds: tuple[int, ...] = (42,)
    protocol: dict = field(default_factory=dict)  # config keys applied to every experiment
    promotion: dict = field(default_factory=lambda: dict(PROMOTION_DEFAULTS))
    quick: dict = field(default_factory=dict)  # what --quick overrides
    ensemble: tuple[str, ...] = ()  # experiments whose models are combined into an `Ensemble` run (none: no ensemble)


@dataclass
class SuiteResult:
    run_id: str
    outcomes: list[comparison.Outcome]
    comparison: comparison.Comparison | None
    decision: object | None
    timings: dict[str, float]
    aliases_moved: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # alias -> (before, after)


def load_suite(path: str | Path) -> SuiteConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: suite config not found")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - SUITE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown suite key(s) {', '.join(sorted(unknown))}")
    if not data.get("experiments"):
        raise ConfigError(f"{path}: lists no experiments")
    promotion = {**SuiteConfig.__dataclass_fields__["promotion"].default_factory(), **(data.get("promotion") or {})}
    if set(promotion) - PROMOTION_KEYS:
        raise ConfigError(f"{path}: unknown promotion key(s) {', '.join(sorted(set(promotion) - PROMOTION_KEYS))}")
    check_metric(promotion["metric"])
    suite = SuiteConfig(tuple(data["experiments"]), tuple(int(s) for s in data.get("seeds") or [42]),
                        dict(data.get("protocol") or {}), promotion, dict(data.get("quick") or {}),
                        _ensemble_members(data.get("ensemble", False), tuple(data["experiments"]), path))
    for name, seed in plan(suite):  # every experiment must load: fail before any work
        experiment_config(suite, name, seed, quick=True)
    return suite


def _ensemble_members(value, experiments: tuple[str, ...], path: Path) -> tuple[str, ...]:
    """`ensemble: true` (every experiment), false, or a list of at least two of the suite's experiments."""
    if value is True:
        return experiments if len(experiments) > 1 else ()
    if value in (False, None):
        return ()
    if not isinstance(value, list) or len(value) < 2:
        raise ConfigError(f"{path}: ensemble must be true, false or a list of two or more experiments, got {value!r}")
    if unknown := [name for name in value if name not in experiments]:
        raise ConfigError(f"{path}: ensemble names {', '.join(map(str, unknown))}, not among the experiments "
                          f"({', '.join(experiments)})")
    return tuple(dict.fromkeys(value))


def suite_of_run(run_id: str) -> tuple[SuiteConfig, bool]:
    """The suite config and --quick flag a parent run was started with (to resume it as it was)."""
    with tempfile.TemporaryDirectory() as tmp:
        suite = load_suite(tracking.RunLogger(run_id).download("suite.yaml", tmp))
    return suite, tracking.get_run(run_id).data.params.get("quick") == "true"


def plan(suite: SuiteConfig) -> list[tuple[str, int]]:
    return [(name, seed) for name in suite.experiments for seed in suite.seeds]


def experiment_config(suite: SuiteConfig, experiment: str, seed: int, *, quick: bool) -> Config:
    overrides = {**suite.protocol, **(suite.quick if quick else {}), "seed": seed}
    cfg = config_mod.load(config_mod.experiment_path(experiment), **overrides)
    if len(suite.seeds) > 1:
        cfg = cfg.replace(name=f"{cfg.name}{seed_suffix(seed)}")
    return cfg


def run_suite(suite: SuiteConfig, *, quick: bool = False, progress: bool = True,
              resume_run_id: str | None = None) -> SuiteResult:
    start = time.perf_counter()
    configs = [experiment_config(suite, name, seed, quick=quick) for name, seed in plan(suite)]
    timings: dict[str, float] = {}
    with tracking.start_run(f"suite{'-quick' if quick else ''}-{time.strftime('%Y-%m-%d-%H%M%S')}",
                            resume_run_id=resume_run_id, tags={"pneumo_ml.kind": "suite"}) as parent:
        if resume_run_id is None:
            parent.log_params({"experiments": ",".join(suite.experiments), "seeds": ",".join(map(str, suite.seeds)),
                               "quick": quick, **{f"protocol.{k}": v for k, v in configs[0].to_dict().items()
                                                  if k not in ("name", "model", "aug", "pretrained", "seed")},
                               **{f"promotion.{k}": v for k, v in suite.promotion.items()}})
            parent.log_text(yaml.safe_dump({"experiments": list(suite.experiments), "seeds": list(suite.seeds),
                                            "protocol": suite.protocol, "promotion": suite.promotion,
                                            "quick": suite.quick, "ensemble": list(suite.ensemble) or False},
                                           sort_keys=False), "suite.yaml")
        previous = {run.data.tags.get(tracking.EXPERIMENT_TAG, run.info.run_name): run
                    for run in tracking.child_runs(parent.run_id)} \
            if resume_run_id else {}
        data = None
        outcomes: list[comparison.Outcome] = []
        for cfg in configs:
            earlier = previous.get(cfg.name)
            if earlier is not None and earlier.info.status == "FINISHED":
                log.info("%s finished in an earlier attempt: kept", cfg.name)
                outcomes.append(_outcome_of_finished_run(earlier, experiment_name(cfg), cfg.seed))
                continue
            if data is None:  # one split and one decoded cache for every experiment of the suite
                data = prepare_data(cfg, progress=progress)
                timings["data_s"] = data.seconds
            resume_child = earlier.info.run_id if earlier is not None and tracking.resumable(earlier) else None
            if progress:
                print(f"[{configs.index(cfg) + 1}/{len(configs)}] {cfg.name}", file=sys.stderr, flush=True)
            outcomes.append(_run_child(cfg, data, parent.run_id, resume_child, progress, timings))
        if suite.ensemble:
            with stage(timings, "ensemble_s"):
                outcomes += _ensembles(suite, configs, outcomes, parent.run_id, previous)
        finished = [o for o in outcomes if o.status == "FINISHED"]
        result = SuiteResult(parent.run_id, outcomes, None, None, timings)
        if any(o.version for o in finished):
            p = suite.promotion
            before = tracking.model_aliases(configs[0].registered_model_name)
            # The suite's own versions compete, ranked by experiment: the best version of the experiment
            # with the best mean over seeds (promotion.decide), against a comparable champion.
            result.decision = tracking.promote(configs[0].registered_model_name, metric=p["metric"],
                                               alias=p["alias"], margin=float(p["margin"]),
                                               challenger=p.get("challenger"),
                                               experiments={o.version: o.name for o in finished if o.version})
            parent.set_tags({"promotion.decision": result.decision.reason[:5000]})
            after = tracking.model_aliases(configs[0].registered_model_name)
            result.aliases_moved = {a: (before.get(a), v) for a, v in sorted(after.items()) if before.get(a) != v}
        if finished:  # after promotion, so that the page can say what it decided
            t0 = time.perf_counter()
            reference = validation_winner(finished, suite.promotion["metric"])
            if data is None:  # every child finished in an earlier attempt: the baseline still needs the split
                data = prepare_data(configs[0], progress=progress)
            result.comparison = comparison.compare(outcomes + baseline_outcomes(data, suite.seeds),
                                                   reference=reference, bootstrap=configs[0].bootstrap,
                                                   seed=configs[0].seed,
                                                   context=what_was_run(suite, configs, quick, outcomes, result))
            with tempfile.TemporaryDirectory() as tmp:
                comparison.write(result.comparison, Path(tmp))
                parent.log_dir(tmp, "comparison")
            timings["comparison_s"] = time.perf_counter() - t0
        timings["suite_wall_s"] = time.perf_counter() - start
        parent.log_metrics({"n_finished": len(finished), "n_failed": len(outcomes) - len(finished),
                            **{f"time_{k}": v for k, v in timings.items()}})
    return result


def what_was_run(suite: SuiteConfig, configs: list[Config], quick: bool, outcomes: list[comparison.Outcome],
                 result: SuiteResult) -> list[tuple[str, str]]:
    """The page's opening table: data, protocol, weights, seeds, machine, the aliases' decision, the child runs."""
    c = configs[0]
    rows = [("Data", f"{c.data} ({c.n_train}/{c.n_val}/{c.n_test} train/val/test images; 0 = all)"),
            ("Run", "quick (--quick: a smoke test of the pipeline, not a result)" if quick else "the full protocol"),
            ("Protocol", f"{c.image_size} px, {c.epochs} epoch(s), batch {c.batch_size}, Adam lr {c.lr:g}, "
                         f"loss {c.loss}, sampler {c.sampler}"),
            ("Seeds", ", ".join(map(str, suite.seeds))),
            ("Weights", "; ".join(f"{name}: {source or 'unknown'}" for name, source in
                                  dict.fromkeys((o.name, o.weights_source) for o in outcomes
                                                if o.status == "FINISHED"))),
            ("Machine", devices.describe())]
    for alias, (old, new) in result.aliases_moved.items():
        rows.append((f"@{alias}", f"v{new} (was {f'v{old}' if old else 'unset'})"))
    if result.decision is not None:
        rows.append(("Promotion", result.decision.reason))
    rows += [(f"Run: {o.name}" + (f" (seed {o.seed})" if len(suite.seeds) > 1 else ""),
              tracking.run_link(o.run_id) if o.run_id else o.status) for o in outcomes]
    return rows


def _ensembles(suite: SuiteConfig, configs: list[Config], outcomes: list[comparison.Outcome], parent_run_id: str,
               previous: dict) -> list[comparison.Outcome]:
    """One `Ensemble` child per seed, of that seed's finished members (at least two); a failure is the
    ensemble's alone, like any experiment's."""
    names = {experiment_name(experiment_config(suite, key, suite.seeds[0], quick=True)) for key in suite.ensemble}
    made = []
    for seed in suite.seeds:
        members = [o for o, cfg in zip(outcomes, configs)
                   if cfg.seed == seed and o.status == "FINISHED" and experiment_name(cfg) in names]
        name = ENSEMBLE_NAME + (seed_suffix(seed) if len(suite.seeds) > 1 else "")
        earlier = previous.get(name)
        if earlier is not None and earlier.info.status == "FINISHED":
            made.append(_outcome_of_finished_run(earlier, ENSEMBLE_NAME, seed))
            continue
        if len(members) < 2:
            log.warning("%s: fewer than two members finished, no ensemble", name)
            continue
        uris = [f"models:/{configs[0].registered_model_name}/{o.version}" if o.version else f"runs:/{o.run_id}/model"
                for o in members]
        cfg = configs[0]
        try:
            made.append(build_ensemble(uris, name=name, parent_run_id=parent_run_id, register=cfg.register,
                                       registered_model_name=cfg.registered_model_name, bootstrap=cfg.bootstrap,
                                       seed=seed).outcome)
        except Exception as e:  # the experiments' results stand without it
            reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            log.error("%s failed: %s", name, reason)
            made.append(comparison.Outcome(ENSEMBLE_NAME, seed, "", "FAILED",
                                           error=f"{e.__class__.__name__}: {reason}"))
    return made


def _run_child(cfg: Config, data, parent_run_id: str, resume_child: str | None, progress: bool,
               timings: dict[str, float]) -> comparison.Outcome:
    try:
        result = run_experiment(cfg, data=data, parent_run_id=parent_run_id, resume_run_id=resume_child,
                                progress=progress)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one experiment failing must not lose the others
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        log.error("%s failed: %s", cfg.name, reason)
        return comparison.Outcome(experiment_name(cfg), cfg.seed, "", "FAILED",
                                  error=f"{e.__class__.__name__}: {reason}")
    for key, value in result.timings.items():
        timings[key] = timings.get(key, 0.0) + value
    return _outcome(result, data)


def _outcome(result: ExperimentResult, data: PreparedData) -> comparison.Outcome:
    test = data.split.part("test")
    return comparison.Outcome(
        experiment_name(result.config), result.config.seed, result.run_id, "FINISHED", threshold=result.threshold,
        val_targets=result.val["targets"], val_probs=result.val["probs"],
        test_targets=result.test["targets"], test_probs=result.test["probs"],
        history=result.history, best_epoch=result.best_epoch, version=result.version,
        test_groups=test["patient_id"].astype(str).to_numpy(), test_paths=test["path"].to_numpy(),
        weights_source=result.weights_source)


def _outcome_of_finished_run(run, name: str, seed: int) -> comparison.Outcome:
    """Rebuild a finished child's outcome from what it logged (the suite was interrupted after it)."""
    logger = tracking.RunLogger(run.info.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        test = pd.read_csv(logger.download("predictions/test_predictions.csv", tmp))
        val = pd.read_csv(logger.download("predictions/val_predictions.csv", tmp))
    history = tracking.metric_history(run.info.run_id, ["train_loss", "train_accuracy", "val_loss",
                                                        "val_accuracy", "val_auc"])
    return comparison.Outcome(
        name, seed, run.info.run_id, "FINISHED", threshold=tracking.run_metric(run, "val_threshold", 0.5),
        val_targets=val["target"].to_numpy(), val_probs=val["probability"].to_numpy(),
        test_targets=test["target"].to_numpy(), test_probs=test["probability"].to_numpy(),
        history=history, best_epoch=int(tracking.run_metric(run, "best_epoch", 0)),
        version=run.data.tags.get(tracking.REGISTERED_VERSION_TAG),
        test_groups=test["patient_id"].astype(str).to_numpy(), test_paths=test["path"].to_numpy(),
        weights_source=run.data.params.get("weights_source", ""))


def baseline_outcomes(data: PreparedData, seeds: tuple[int, ...]) -> list[comparison.Outcome]:
    """The IntensityBaseline fitted on the training split, its threshold chosen on validation like every
    model's; one (identical) outcome per seed, so it is paired with the reference of each seed."""
    model = IntensityBaseline().fit(data.images["train"], data.targets["train"])
    val, test = model.predict_proba(data.images["val"]), model.predict_proba(data.images["test"])
    part = data.split.part("test")
    return [comparison.Outcome(
        IntensityBaseline.name, seed, "", "FINISHED", threshold=youden_threshold(data.targets["val"], val),
        val_targets=data.targets["val"], val_probs=val, test_targets=data.targets["test"], test_probs=test,
        test_groups=part["patient_id"].astype(str).to_numpy(), test_paths=part["path"].to_numpy(),
        weights_source=comparison.BASELINE_WEIGHTS) for seed in seeds]


def validation_winner(outcomes: list[comparison.Outcome], metric: str) -> str:
    """The experiment the others are tested against: the best mean validation figure over its seeds (ties:
    the lower mean validation loss), the rule promotion applies to a suite's versions."""
    higher = check_metric(metric)

    def figure(o: comparison.Outcome, name: str) -> float:
        if name == "val_auc":
            return roc_auc(o.val_targets, o.val_probs)
        if name == "val_accuracy":
            return float(((o.val_probs >= 0.5) == o.val_targets).mean())
        row = next((r for r in o.history if r["epoch"] == o.best_epoch), None)
        return row["val_loss"] if row else math.nan

    candidates = [Candidate(str(i), o.name, o.run_id, figure(o, metric), figure(o, "val_loss"))
                  for i, o in enumerate(outcomes)]
    ranked = rank_experiments(candidates, higher)
    return ranked[0].experiment if ranked else outcomes[0].name


def summary(result: SuiteResult) -> str:
    lines = [f"suite run {result.run_id}: {sum(o.status == 'FINISHED' for o in result.outcomes)} finished, "
             f"{sum(o.status != 'FINISHED' for o in result.outcomes)} failed"]
    if result.comparison is not None:
        lines.append(result.comparison.markdown)
    for o in result.outcomes:
        if o.status != "FINISHED":
            lines.append(f"FAILED {o.name}: {o.error}")
    if result.decision is not None:
        lines.append(f"promotion: {result.decision.reason}")
    moved = [f"@{alias} -> v{new} (was {f'v{old}' if old else 'unset'})"
             for alias, (old, new) in result.aliases_moved.items()]
    lines.append(f"aliases moved: {', '.join(moved) if moved else 'none'}")
    lines.append(f"wall time {result.timings.get('suite_wall_s', math.nan):.1f} s")
    if result.comparison is not None:
        lines.append(f"report: {tracking.artifact_location(result.run_id, 'comparison/report.html')}")
    lines.append(f"look at it: {tracking.ui_hint()}")
    return "\n".join(lines)


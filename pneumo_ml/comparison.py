"""The suite's comparison of its experiments: test metrics with patient-level bootstrap intervals, paired tests
against the validation-chosen reference and the IntensityBaseline (Holm-corrected), figures, a Markdown summary
and one self-contained HTML page.

No MLflow here: the suite logs the folder `write` fills as `comparison/` on its parent run.
Research use, not for diagnosis.
"""
from __future__ import annotations

import base64
import html as html_lib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .baseline import IntensityBaseline
from .metrics import binary_metrics, bootstrap_ci, delong_test, holm, mcnemar, paired_bootstrap_auc, roc_auc
from .plots import FIGURE_DPI, draw_confusion, draw_curves, draw_roc, model_colours
from .vocabulary import NOTICE_SENTENCE

RESEARCH_NOTE = NOTICE_SENTENCE  # its own paragraph, styled as a note
ALPHA = 0.05
BASELINE = IntensityBaseline.name
BASELINE_WEIGHTS = "none (logistic regression on intensity statistics, fitted on the training split)"
SELECTION_LABEL = "Validation AUC (selection statistic)"
METRICS = ("accuracy", "auc", "sensitivity", "specificity")
TUNED = ("accuracy", "sensitivity", "specificity")  # AUC does not depend on the threshold
FILES = ("results.md", "results.csv", "tests.csv", "metrics_bar.png", "roc_overlay.png", "per_experiment.png",
         "dashboard.png", "report.html")
# Per-seed values averaged across seeds; the point values (not the interval bounds) also get a *_std column.
POINTS = [*METRICS, *(f"tuned_{m}" for m in TUNED), "val_auc", "threshold"]
INTERVALS = [f"{m}_ci_{side}" for m in [*METRICS, *(f"tuned_{m}" for m in TUNED)] for side in ("low", "high")]


@dataclass
class Outcome:
    name: str
    seed: int
    run_id: str
    status: str
    error: str | None = None
    threshold: float = 0.5
    val_targets: np.ndarray | None = None
    val_probs: np.ndarray | None = None
    test_targets: np.ndarray | None = None
    test_probs: np.ndarray | None = None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    version: str | None = None
    test_groups: np.ndarray | None = None  # patient id per test image: the bootstrap's sampling unit
    test_paths: np.ndarray | None = None   # the test images themselves, to check every model saw the same ones
    weights_source: str = ""


@dataclass
class Comparison:
    table: pd.DataFrame
    tests: pd.DataFrame
    reference: str
    failed: list[Outcome]
    figures: dict[str, Figure]
    markdown: str
    html: str


def _usable(o: Outcome) -> bool:
    return o.status == "FINISHED" and o.test_targets is not None and o.test_probs is not None


def _per_seed(o: Outcome, n_boot: int) -> dict:
    y, p = np.asarray(o.test_targets), np.asarray(o.test_probs, dtype=np.float64)
    row = {}
    for prefix, threshold, names in (("", 0.5, METRICS), ("tuned_", o.threshold, TUNED)):
        point = binary_metrics(y, p, threshold)
        # The run's own seed, as training used: the intervals are those its run logged, and every model of one
        # seed is scored on the same bootstrap resamples.
        ci = bootstrap_ci(y, p, threshold, groups=o.test_groups, n_boot=n_boot, seed=o.seed)
        for m in names:
            row[prefix + m] = point[m]
            row[f"{prefix}{m}_ci_low"], row[f"{prefix}{m}_ci_high"] = ci[m]
    has_val = o.val_targets is not None and o.val_probs is not None
    row["val_auc"] = roc_auc(o.val_targets, o.val_probs) if has_val else math.nan
    row["threshold"] = o.threshold
    return row


def _table_row(name: str, runs: list[Outcome], failed: list[Outcome], reference: str, n_boot: int) -> dict:
    per_seed = pd.DataFrame([_per_seed(o, n_boot) for o in runs], columns=POINTS + INTERVALS, dtype=float)
    row = {"experiment": name, "is_reference": name == reference,
           "status": "FINISHED" if runs else "/".join(sorted({o.status for o in failed})),
           "error": "; ".join(f"seed {o.seed}: {o.error or 'no test predictions'}" for o in failed) or None,
           "n_seeds": len(runs), "n_failed": len(failed), "seeds": ", ".join(str(o.seed) for o in runs),
           "n_test": len(runs[0].test_targets) if runs else 0,
           "weights_source": ", ".join(dict.fromkeys(o.weights_source or "unknown" for o in runs)) or None}
    for col in POINTS:
        row[col] = per_seed[col].mean()
        for bound in (f"{col}_ci_low", f"{col}_ci_high"):
            if bound in INTERVALS:
                row[bound] = per_seed[bound].mean()
        row[f"{col}_std"] = per_seed[col].std()  # NaN for a single seed
    row["version"] = ", ".join(str(o.version) for o in runs if o.version) or None
    row["run_id"] = ", ".join(o.run_id for o in runs + failed)
    return row


def _same_images(a: Outcome, b: Outcome) -> bool:
    """Paths when both outcomes know them (labels alone would let two different test sets pass)."""
    if a.test_paths is not None and b.test_paths is not None:
        return np.array_equal(np.asarray(a.test_paths, dtype=str), np.asarray(b.test_paths, dtype=str))
    return np.array_equal(np.asarray(a.test_targets), np.asarray(b.test_targets))


def _test_rows(name: str, runs: list[Outcome], reference_runs: list[Outcome], n_boot: int, seed: int,
               notes: list[str]) -> list[dict]:
    by_seed = {o.seed: o for o in reference_runs}
    pairs = [(by_seed[o.seed], o) for o in runs if o.seed in by_seed] or [(reference_runs[0], runs[0])]
    rows = []
    for ref, o in pairs:
        if not _same_images(ref, o):
            notes.append(f"{name} (seed {o.seed}) was not tested against {ref.name}: its test images differ.")
            continue
        y, groups = np.asarray(ref.test_targets), ref.test_groups
        p, p_ref = np.asarray(o.test_probs, dtype=np.float64), np.asarray(ref.test_probs, dtype=np.float64)
        d = delong_test(y, p, p_ref, groups=groups)
        boot = (paired_bootstrap_auc(y, p, p_ref, groups=groups, n_boot=n_boot, seed=seed) if n_boot
                else {"diff_low": math.nan, "diff_high": math.nan, "p_value": math.nan})
        row = {"experiment": name, "reference": ref.name, "seed": o.seed, "reference_seed": ref.seed,
               "n_test": len(y), "n_patients": len(np.unique(groups)) if groups is not None else len(y),
               "auc": d["auc_a"], "reference_auc": d["auc_b"], "auc_diff": d["diff"],
               "auc_diff_low": boot["diff_low"], "auc_diff_high": boot["diff_high"], "delong_z": d["z"],
               "delong_p": d["p_value"], "delong_note": d["note"], "bootstrap_p": boot["p_value"]}
        for prefix, t, t_ref in (("", 0.5, 0.5), ("tuned_", o.threshold, ref.threshold)):
            pred, pred_ref = (p >= t).astype(int), (p_ref >= t_ref).astype(int)
            mc = mcnemar(y, pred, pred_ref, groups=groups)
            row.update({f"{prefix}accuracy": float((pred == y).mean()),
                        f"reference_{prefix}accuracy": float((pred_ref == y).mean()),
                        f"{prefix}only_experiment_right": mc["a_only_right"],
                        f"{prefix}only_reference_right": mc["b_only_right"],
                        f"{prefix}mcnemar_p": mc["p_value"]})
        rows.append(row)
    return rows


HOLM_FAMILY = {"delong_p": "resolved", "mcnemar_p": "accuracy_resolved", "tuned_mcnemar_p": "tuned_accuracy_resolved"}


def _adjust(tests: pd.DataFrame) -> pd.DataFrame:
    """Holm's correction over every test of the report (each pair's DeLong and both McNemar tests); a
    difference is "resolved" when its adjusted p-value is below ALPHA."""
    if tests.empty:
        return tests
    family = np.concatenate([tests[col].to_numpy(float) for col in HOLM_FAMILY])
    adjusted = holm(family).reshape(len(HOLM_FAMILY), len(tests))
    for (col, verdict), values in zip(HOLM_FAMILY.items(), adjusted):
        tests[f"{col}_holm"] = values
        tests[verdict] = values < ALPHA
    return tests


TEST_COLUMNS = ["experiment", "reference", "seed", "reference_seed", "n_test", "n_patients", "auc", "reference_auc",
                "auc_diff", "auc_diff_low", "auc_diff_high", "delong_z", "delong_p", "delong_p_holm", "delong_note",
                "bootstrap_p", "resolved", "accuracy", "reference_accuracy", "only_experiment_right",
                "only_reference_right", "mcnemar_p", "mcnemar_p_holm", "accuracy_resolved", "tuned_accuracy",
                "reference_tuned_accuracy", "tuned_only_experiment_right", "tuned_only_reference_right",
                "tuned_mcnemar_p", "tuned_mcnemar_p_holm", "tuned_accuracy_resolved"]


def baseline_verdicts(tests: pd.DataFrame, models: list[str]) -> dict[str, tuple[str, str]]:
    """Per model: ("yes" | "no" | "worse", a sentence) on whether its test AUC beats the IntensityBaseline's,
    by the Holm-adjusted DeLong test; with several seeds, "yes" only when every seed's difference is resolved
    in the model's favour."""
    out = {}
    for name in models:
        mine = tests[(tests.experiment == name) & (tests.reference == BASELINE)]
        theirs = tests[(tests.experiment == BASELINE) & (tests.reference == name)]
        diffs = np.r_[mine.auc_diff.to_numpy(float), -theirs.auc_diff.to_numpy(float)]
        resolved = np.r_[mine.resolved.to_numpy(bool), theirs.resolved.to_numpy(bool)]
        p_holm = np.r_[mine.delong_p_holm.to_numpy(float), theirs.delong_p_holm.to_numpy(float)]
        if not len(diffs):
            continue
        worst_p = _p(float(np.nanmax(p_holm))) if not np.isnan(p_holm).all() else _p(math.nan)
        if resolved.all() and (diffs > 0).all():
            out[name] = ("yes", f"{name} beats the {BASELINE}: AUC {_signed(diffs)} above it (adjusted {worst_p}).")
        elif resolved.all() and (diffs < 0).all():
            out[name] = ("worse", f"{name} is worse than the {BASELINE}: AUC {_signed(diffs)} (adjusted {worst_p}).")
        else:
            out[name] = ("no", f"{name} is not shown to beat the {BASELINE}: AUC difference {_signed(diffs)}, "
                               f"not resolved by these test images (adjusted {worst_p}).")
    return out


def _signed(diffs: np.ndarray) -> str:
    return ", ".join(f"{d:+.3f}" for d in diffs)


def compare(outcomes: list[Outcome], *, reference: str, bootstrap: int = 1000, seed: int = 0,
            context: list[tuple[str, str]] | None = None) -> Comparison:
    """Tabulate, test and plot the suite's outcomes; `reference` is the experiment with the best validation figure.
    `context`: (what, value) rows of what was run, the page's opening table."""
    names = list(dict.fromkeys(o.name for o in outcomes))
    runs = {n: sorted((o for o in outcomes if o.name == n and _usable(o)), key=lambda o: o.seed) for n in names}
    failed = [o for o in outcomes if not _usable(o)]
    finished = [n for n in names if runs[n]]

    notes = []
    chosen = reference
    if reference not in finished:
        reference = finished[0] if finished else ""
        why = "failed" if chosen in names else "is absent"
        notes.append(f"The requested reference {chosen} {why}; falling back to "
                     + (f"{reference}, the first finished experiment." if reference else "nothing: no run finished."))

    table = pd.DataFrame([_table_row(n, runs[n], [o for o in failed if o.name == n], reference, bootstrap)
                          for n in names])
    pairs = [(n, reference) for n in finished if n != reference]
    if BASELINE in finished and reference != BASELINE:  # the reference meets the baseline in the row above
        pairs += [(n, BASELINE) for n in finished if n not in (reference, BASELINE)]
    rows = [r for n, against in pairs for r in _test_rows(n, runs[n], runs[against], bootstrap, seed, notes)]
    tests = _adjust(pd.DataFrame(rows, columns=TEST_COLUMNS))
    verdicts = baseline_verdicts(tests, [n for n in finished if n != BASELINE])
    table["beats_baseline"] = table.experiment.map(lambda n: verdicts.get(n, (None, ""))[0])

    first = {n: runs[n][0] for n in finished}
    several = any(len(runs[n]) > 1 for n in finished)
    roc_title = "Test ROC (first seed of each)" if several else "Test ROC"
    figures = {"metrics_bar.png": metrics_bar(table),
               "roc_overlay.png": roc_overlay(first, roc_title, model_colours(table.experiment)),
               "per_experiment.png": dashboard(table, first, roc_title, summary=False),
               "dashboard.png": dashboard(table, first, roc_title)}
    sections = _sections(table, tests, reference, runs, failed, notes, bootstrap, verdicts)
    if context:
        sections.insert(1, ("What was run", [[f"{what}: {value}" for what, value in context]]))
    title = "pneumo-ml comparison: NORMAL vs PNEUMONIA"
    return Comparison(table=table, tests=tests, reference=reference, failed=failed, figures=figures,
                      markdown=_markdown(title, sections), html=_html(title, sections, figures))


def write(comparison: Comparison, folder: Path) -> list[Path]:
    """Write every file of the comparison into `folder` (logged by the suite as `comparison/`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(comparison.markdown, encoding="utf-8")
    comparison.table.to_csv(folder / "results.csv", index=False)
    comparison.tests.to_csv(folder / "tests.csv", index=False)
    for name, fig in comparison.figures.items():
        (folder / name).write_bytes(_png(fig))
        fig.savefig(folder / Path(name).with_suffix(".svg"), format="svg", metadata={"Date": None})
    (folder / "report.html").write_text(comparison.html, encoding="utf-8")
    return [folder / name for name in FILES]


# --- figures -------------------------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_axis_off()


def draw_metrics_bar(ax, table: pd.DataFrame) -> None:
    """Per model, in its colour: accuracy at 0.5 (plain), at the validation threshold (hatched), AUC (dotted)."""
    done = table[table.n_seeds > 0]
    if done.empty:
        return _empty(ax, "no finished runs")
    colours = [model_colours(table.experiment)[n] for n in done.experiment]
    bars = (("accuracy", "accuracy @ 0.5", ""), ("tuned_accuracy", "accuracy @ validation threshold", "///"),
            ("auc", "AUC", ".."))
    x, width = np.arange(len(done)), 0.8 / len(bars)
    for i, (col, label, hatch) in enumerate(bars):
        value = done[col].to_numpy(float)
        err = np.vstack([value - done[f"{col}_ci_low"].to_numpy(float), done[f"{col}_ci_high"].to_numpy(float) - value])
        err = None if np.isnan(err).all() else np.nan_to_num(np.clip(err, 0, None))  # no bars when bootstrap=0
        ax.bar(x + (i - 1) * width, value, width, yerr=err, capsize=3, color=colours, hatch=hatch,
               edgecolor="white", linewidth=0)
        ax.bar([np.nan], [np.nan], color="0.6", hatch=hatch, edgecolor="white", label=label)  # the legend's key
    ax.set_xticks(x, done.experiment, rotation=15 if len(done) > 3 else 0)
    ax.axhline(0.5, c="grey", ls=":", lw=1)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("test (95 % bootstrap interval)")
    ax.legend(fontsize=8, loc="upper center", ncols=3)
    ax.set_title("Test accuracy and AUC", fontsize=10)


def metrics_bar(table: pd.DataFrame) -> Figure:
    fig = _figure(max(6.0, 1.6 * len(table) + 2), 4.2)
    draw_metrics_bar(fig.subplots(), table)
    return fig


def _draw_roc(ax, first: dict[str, Outcome], title: str, colours: dict[str, str]) -> None:
    if not first:
        return _empty(ax, "no finished runs")
    draw_roc(ax, {n: (o.test_targets, o.test_probs, roc_auc(o.test_targets, o.test_probs)) for n, o in first.items()},
             title, colours=colours)


def roc_overlay(first: dict[str, Outcome], title: str = "Test ROC", colours: dict[str, str] | None = None) -> Figure:
    fig = _figure(5.5, 5.0)
    _draw_roc(fig.subplots(), first, title, colours or model_colours(first))
    return fig


def dashboard(table: pd.DataFrame, first: dict[str, Outcome], roc_title: str = "Test ROC", *,
              summary: bool = True) -> Figure:
    """Per experiment: confusion matrix at its validation threshold and training curves; then, with `summary`,
    the bars and ROC (the one-figure study dashboard; the page shows those two above it, so it embeds
    the per-experiment rows only)."""
    per_row = 1 if len(first) <= 4 else 2  # beyond four experiments, two per row keeps the page from getting tall
    rows = max(1, math.ceil(len(first) / per_row))
    fig = _figure(11.0 * per_row, 3.3 * rows + (4.2 if summary else 0.4))
    grid = fig.add_gridspec(rows + summary, 3 * per_row, height_ratios=[1] * rows + [1.3] * summary)
    loss_axes = []
    for i, (name, o) in enumerate(first.items()):
        r, c = divmod(i, per_row)
        ax_cm, ax_loss, ax_acc = (fig.add_subplot(grid[r, 3 * c + k]) for k in range(3))
        draw_confusion(ax_cm, o.test_targets, o.test_probs, o.threshold, f"{name} @ {o.threshold:.3f} (test)")
        if o.history:
            draw_curves(ax_loss, ax_acc, o.history, o.best_epoch)
            ax_loss.set_title(f"{name}: loss", fontsize=10)
            ax_acc.set_title(f"{name}: accuracy / AUC", fontsize=10)
            loss_axes.append(ax_loss)
        else:
            _empty(ax_loss, "no training history")
            _empty(ax_acc, "no training history")
    if loss_axes:  # one loss scale for every experiment: the panels are compared
        low = min(ax.get_ylim()[0] for ax in loss_axes)
        high = max(ax.get_ylim()[1] for ax in loss_axes)
        for ax in loss_axes:
            ax.set_ylim(low, high)
    if not first:
        _empty(fig.add_subplot(grid[0, :]), "no finished runs")
    if summary:
        draw_metrics_bar(fig.add_subplot(grid[rows, :2 * per_row]), table)
        _draw_roc(fig.add_subplot(grid[rows, 2 * per_row:]), first, roc_title, model_colours(table.experiment))
    fig.suptitle(f"pneumo-ml comparison — {RESEARCH_NOTE}")
    return fig


# --- text ----------------------------------------------------------------------------------------------------

def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _p(p: float) -> str:
    return "p = —" if _nan(p) else "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _cell(row, col: str) -> str:
    if _nan(row[col]):
        return "—"
    text = f"{row[col]:.2f}"
    if row["n_seeds"] > 1:
        text += f" ± {row[f'{col}_std']:.2f}"
    low, high = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
    return text if _nan(low) else f"{text} [{low:.2f}, {high:.2f}]"


def _label(r) -> str:
    return r.experiment + (" (reference)" if r.is_reference else " (trivial baseline)" if r.experiment == BASELINE
                           else "")


def _results(table: pd.DataFrame, tuned: bool) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        pre = "tuned_" if tuned else ""
        row = {"Model": _label(r), "Threshold": _cell(r, "threshold"), "Accuracy": _cell(r, pre + "accuracy"),
               "AUC": _cell(r, "auc"), "Sensitivity": _cell(r, pre + "sensitivity"),
               "Specificity": _cell(r, pre + "specificity"), SELECTION_LABEL: _cell(r, "val_auc"),
               "Weights": "—" if _nan(r.weights_source) or not r.weights_source else r.weights_source}
        if not r.n_seeds:
            row["Accuracy"] = "no test predictions" if r.status == "FINISHED" else r.status
        if not tuned:
            del row["Threshold"], row[SELECTION_LABEL], row["Weights"]
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(resolved: bool, p: float, n: int) -> str:
    return (f"resolved (adjusted {_p(p)})" if resolved
            else f"the {n} test images cannot resolve this difference (adjusted {_p(p)})")


def _intro(runs, reference: str, n_boot: int) -> list[str]:
    done = [o for rs in runs.values() for o in rs]
    first = runs[reference][0]
    y = np.asarray(first.test_targets)
    n, pos = len(y), int(y.sum())
    patients = len(np.unique(first.test_groups)) if first.test_groups is not None else n
    val = next((len(o.val_targets) for o in done if o.val_targets is not None), None)
    return [f"Test set: {n} images ({n - pos} NORMAL, {pos} PNEUMONIA) from {patients} patients"
            + (f"; validation set: {val} images" if val else "") + ". "
            + (f"Intervals: 95 % stratified cluster bootstrap ({n_boot} resamples): test patients are resampled "
               "within each class, so images of one patient count as one unit of evidence." if n_boot
               else "No bootstrap intervals (bootstrap = 0)."),
            f"Reference: {reference}, the experiment with the best mean validation figure over its seeds "
            "(never chosen by test figures). The validation AUC column is that selection statistic: the winner's "
            "is optimistic by construction, read its test figures instead."]


def _tests_table(tests: pd.DataFrame, several: bool) -> pd.DataFrame:
    return pd.DataFrame({
        "Model": tests.experiment + (" (seed " + tests.seed.astype(str) + ")" if several else ""),
        "Against": tests.reference,
        "AUC difference [95 % CI]": [f"{r.auc_diff:+.3f}" + ("" if _nan(r.auc_diff_low) else
                                     f" [{r.auc_diff_low:+.3f}, {r.auc_diff_high:+.3f}]")
                                     for r in tests.itertuples()],
        "DeLong p (Holm)": [f"{_p(r.delong_p)} ({_p(r.delong_p_holm)})" for r in tests.itertuples()],
        "McNemar @ 0.5 (only exp./only ref. right, Holm p)": [
            f"{r.only_experiment_right}/{r.only_reference_right}, {_p(r.mcnemar_p_holm)}" for r in tests.itertuples()],
        "McNemar @ val. thresholds (Holm p)": [
            f"{r.tuned_only_experiment_right}/{r.tuned_only_reference_right}, {_p(r.tuned_mcnemar_p_holm)}"
            for r in tests.itertuples()],
        "AUC difference resolved": tests.resolved.map({True: "yes", False: "no"})})


def _test_words(tests: pd.DataFrame, several: bool) -> list[str]:
    words = []
    for r in tests.itertuples():
        line = (f"{r.experiment} vs {r.reference}" + (f" (seed {r.seed})" if several else "")
                + f": AUC {r.auc:.3f} vs {r.reference_auc:.3f}, {_verdict(r.resolved, r.delong_p_holm, r.n_test)}."
                + f" Accuracy at the validation thresholds {r.tuned_accuracy:.2f} vs "
                + f"{r.reference_tuned_accuracy:.2f}: "
                + _verdict(r.tuned_accuracy_resolved, r.tuned_mcnemar_p_holm, r.n_test) + ".")
        words.append(line + (f" Note: {r.delong_note}." if r.delong_note else ""))
    return words


def _sections(table, tests, reference, runs, failed, notes, n_boot, verdicts) -> list[tuple[str, list]]:
    """(heading, blocks): a block is a paragraph (str), a table (DataFrame) or a bullet list (list of str)."""
    done = [o for rs in runs.values() for o in rs]
    several = bool(len(table) and table.n_seeds.max() > 1)
    intro = [RESEARCH_NOTE] + (_intro(runs, reference, n_boot) if done else []) + notes
    sections = [("", intro)]
    sections.append(("Test results at threshold 0.5", [_results(table, tuned=False)]))
    footnote = ["With several seeds: mean ± std across seeds; the bracketed interval is the mean of the per-seed "
                "bootstrap bounds (the test-image noise of a typical seed, not an interval of the mean)."]
    sections.append(("Test results at the validation threshold (Youden's J)",
                     [_results(table, tuned=True), *(footnote if several else [])]))
    if verdicts:
        sections.append((f"Against the {BASELINE}", [
            f"The {BASELINE} is a logistic regression on global intensity statistics of each image (mean, std, "
            "percentiles, histogram, mean gradient), fitted on the training split, its threshold chosen on "
            "validation like every model's. A model that does not beat it has shown nothing a histogram does not show.",
            [sentence for _, sentence in verdicts.values()]]))
    if len(tests):
        sections.append((f"Paired tests against {reference}" + (f" and the {BASELINE}" if verdicts else ""), [
            "Differences are experiment − reference on the same test images: DeLong test (Obuchowski's clustered "
            "form: patients, not images, are the independent units) and a paired cluster-bootstrap interval of "
            "the AUC difference, the same patients resampled for both models; McNemar test of accuracy on the "
            "images where the two disagree (exact; clustered by patient when patients have several images).",
            _tests_table(tests, several), _test_words(tests, several)]))
        sections.append(_resolvable(table, tests, reference, done))
    if failed:
        sections.append(("Failed runs (excluded from tests and figures)", [[
            f"{o.name} (seed {o.seed}, run {o.run_id}): {o.status} — {o.error or 'no test predictions'}"
            for o in failed]]))
    sections.append(("", [RESEARCH_NOTE]))
    return sections


def _resolvable(table, tests, reference, done) -> tuple[str, list]:
    n = int(tests.n_test.iloc[0])
    val = next((len(o.val_targets) for o in done if o.val_targets is not None), None)
    half = {m: ((table[f"{m}_ci_high"] - table[f"{m}_ci_low"]) / 2).median() for m in ("accuracy", "auc")}
    width = ([] if _nan(half["accuracy"]) else [
        f"A 95 % interval on accuracy is about ±{half['accuracy']:.2f} wide and on AUC about ±{half['auc']:.2f} "
        "(median half-widths here); differences smaller than that are rarely resolvable."])
    versus = tests[tests.reference == reference]
    family = len(tests) * len(HOLM_FAMILY)
    val_note = f" on only {val} validation images" if val else ""
    return (f"What {n} test images can resolve", [[
        *width,
        f"{int(versus.resolved.sum())} of {len(versus)} AUC differences against {reference} are resolved: "
        f"\"resolved\" means a Holm-adjusted p < {ALPHA}, the correction taken over all {family} tests of this "
        "report (every pair's DeLong and both McNemar tests).",
        "An unresolved difference is not evidence that two models are equal: these images cannot tell them apart.",
        f"Thresholds were chosen{val_note}; the intervals at those thresholds do not include that uncertainty, "
        "and neither do they include the choice of the reference on the same validation images."]])


def _md_table(frame: pd.DataFrame) -> str:
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _markdown(title: str, sections) -> str:
    out = [f"# {title}"]
    for heading, blocks in sections:
        if heading:
            out.append(f"## {heading}")
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                out.append(_md_table(block))
            elif isinstance(block, list):
                out.append("\n".join(f"- {line}" for line in block))
            else:
                out.append(block)
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f4f6}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em;font-weight:600}"""


def _html(title: str, sections, figures: dict[str, Figure]) -> str:
    esc = html_lib.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for heading, blocks in sections:
        if heading:
            body.append(f"<h2>{esc(heading)}</h2>")
        for block in blocks:
            if isinstance(block, pd.DataFrame):
                body.append(block.to_html(index=False, border=0, escape=True))
            elif isinstance(block, list):
                body.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in block) + "</ul>")
            else:
                cls = ' class="note"' if block == RESEARCH_NOTE else ""
                body.append(f"<p{cls}>{esc(block)}</p>")
        if heading.startswith("Test results at the validation"):
            body.append(_img("metrics_bar.png", figures) + _img("roc_overlay.png", figures))
    body.insert(-1, "<h2>Per experiment: test confusion matrix and training curves</h2>"
                + _img("per_experiment.png", figures))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def _img(name: str, figures: dict[str, Figure]) -> str:
    data = base64.b64encode(_png(figures[name])).decode("ascii")
    return f'<img alt="{name}" src="data:image/png;base64,{data}">'

"""`pneumo-ml` commands: parse, call, print. No logic lives here."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .config import parse_bool
from .errors import ConfigError, UserError
from .io import ImageReadError

NOTICE = "research use, not for diagnosis"


class Optional_(click.ParamType):
    """A typed value where an empty string means 'not given' (MLproject passes '' for unset parameters)."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = inner.name

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        return self.inner.convert(value, param, ctx)


class Bool(click.ParamType):
    name = "true|false"

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        try:
            return parse_bool(value)
        except ConfigError:
            self.fail(f"expected true or false, got {value!r}", param, ctx)


def bool_option(name: str, help: str):
    """`--x`, `--x true|false` (as MLproject passes it) and `--no-x`."""
    def decorate(f):
        f = click.option(f"--no-{name}", f"no_{name.replace('-', '_')}", is_flag=True, default=False,
                         help=f"Same as --{name} false.")(f)
        return click.option(f"--{name}", name.replace("-", "_"), type=Bool(), is_flag=False, flag_value="true",
                            default=None, help=help)(f)
    return decorate


def _flag(value, negated: bool):
    return False if negated else value


class Main(click.Group):
    """Every mistake a user can make ends in one line on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except (UserError, ImageReadError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - last resort: name it in one line, keep the traceback for -v
            if os.environ.get("PNEUMO_ML_DEBUG"):
                raise
            from .engine import NonFiniteLossError
            prefix = "error" if isinstance(e, NonFiniteLossError) else f"error ({e.__class__.__name__})"
            click.echo(f"{prefix}: {str(e).splitlines()[0] if str(e) else ''} "
                       f"(set PNEUMO_ML_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="More log output.")
def main(verbose: bool) -> None:
    """Train, compare, explain, register and serve chest X-ray classifiers, tracked in MLflow.

    Research use, not for diagnosis."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pneumo_ml").setLevel(logging.INFO)
    for noisy in ("mlflow", "alembic", "urllib3", "timm", "httpx"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --- train ----------------------------------------------------------------------------------------------

TRAIN_OPTIONS = ("model", "aug", "data", "epochs", "batch_size", "lr", "image_size", "pretrained", "weights",
                 "loss", "seed", "device", "n_train", "n_val", "n_test")


@main.command()
@click.option("--config", "config_path", type=Optional_(click.Path(dir_okay=False)),
              help="Experiment YAML (default: experiments/<model>[_aug|_noaug].yaml).")
@click.option("--model", type=Optional_(click.STRING), help="small_cnn, resnet50, vit_tiny or densenet121.")
@bool_option("aug", "Train with the seed's augmentations (flip, rotation ±10°, brightness ±20 %).")
@click.option("--data", type=Optional_(click.STRING), help="'synthetic', a Kermany-layout folder or a CSV manifest.")
@click.option("--epochs", type=Optional_(click.INT))
@click.option("--batch-size", type=Optional_(click.INT))
@click.option("--lr", type=Optional_(click.FLOAT))
@click.option("--image-size", type=Optional_(click.INT))
@click.option("--pretrained", type=Optional_(click.Choice(["auto", "true", "false"], case_sensitive=False)))
@click.option("--weights", type=Optional_(click.STRING), help="A local state dict / timm checkpoint to start from.")
@click.option("--loss", type=Optional_(click.Choice(["ce", "weighted_ce", "focal"])))
@click.option("--seed", type=Optional_(click.INT))
@click.option("--device", type=Optional_(click.Choice(["auto", "cpu", "cuda"])))
@click.option("--n-train", type=Optional_(click.INT), help="Training images (half per class; 0 = all).")
@click.option("--n-val", type=Optional_(click.INT))
@click.option("--n-test", type=Optional_(click.INT))
@bool_option("register", "Register the model as a new version of pneumonia-classifier (default true).")
@bool_option("skip-bad", "Skip unreadable images (listed in data/skipped.csv) instead of stopping.")
@bool_option("compile", "torch.compile the model.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other config key, e.g. --set patience=2.")
@click.option("--resume", "resume_run_id", type=Optional_(click.STRING), help="Continue a killed run by its id.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(config_path, sets, resume_run_id, quiet, no_aug, no_register, no_skip_bad, no_compile, **options):
    """Train one experiment as one MLflow run."""
    from . import config as config_mod
    from .train import run_experiment, summary_table

    options["aug"] = _flag(options["aug"], no_aug)
    options["register"] = _flag(options.pop("register"), no_register)
    options["skip_bad"] = _flag(options.pop("skip_bad"), no_skip_bad)
    options["compile"] = _flag(options.pop("compile"), no_compile)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = value
    if resume_run_id:
        config = _config_of_run(resume_run_id, options)
    else:
        path = config_path or config_mod.default_experiment(options.get("model"), options.get("aug"))
        config = config_mod.load(path, **options)
    from . import distributed
    try:
        result = run_experiment(config, resume_run_id=resume_run_id, progress=not quiet)
    finally:
        distributed.shutdown()
    if distributed.from_env().is_main:
        click.echo(summary_table(result))


def _config_of_run(run_id: str, options: dict):
    import tempfile

    from . import config as config_mod
    from .tracking import RunLogger, get_run
    get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        path = RunLogger(run_id).download("config.yaml", tmp)
        changed = {k: v for k, v in options.items() if v is not None and k in ("device", "epochs")}
        return config_mod.load(path, **changed)


# --- suite and registry ---------------------------------------------------------------------------------

@main.command()
@click.option("--config", "config_path", type=Optional_(click.Path(dir_okay=False)),
              help="Suite YAML [experiments/suite.yaml].")
@bool_option("quick", "Shrink sizes (the suite YAML's quick: block) for a smoke run.")
@click.option("--resume", "resume_run_id", type=Optional_(click.STRING),
              help="Continue an interrupted suite by its parent run id (finished children are kept).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def suite(config_path, quick, no_quick, resume_run_id, quiet):
    """The seed's four experiments as child runs of one parent run, compared, registered, champion promoted."""
    from . import config as config_mod
    from .suite import load_suite, run_suite, suite_of_run, summary
    quick = _flag(quick, no_quick)
    if resume_run_id and not config_path:
        suite_config, logged_quick = suite_of_run(resume_run_id)
        quick = logged_quick if quick is None else quick
    else:
        suite_config = load_suite(config_path or config_mod.experiment_path("suite"))
    result = run_suite(suite_config, quick=bool(quick), progress=not quiet, resume_run_id=resume_run_id)
    click.echo(summary(result))
    sys.exit(0 if any(o.status == "FINISHED" for o in result.outcomes) else 1)


@main.command()
@click.option("--model-name", default="pneumonia-classifier", show_default=True)
@click.option("--metric", default="val_auc", show_default=True, help="val_auc, val_accuracy or val_loss.")
@click.option("--alias", default="champion", show_default=True)
@click.option("--margin", default=0.0, show_default=True, type=float,
              help="Promote only when the winner beats the current alias holder by this much.")
@click.option("--challenger", default="challenger", show_default=True, help="Alias for the runner-up ('' for none).")
def promote(model_name, metric, alias, margin, challenger):
    """Point @champion at the registered version with the best validation metric."""
    from .tracking import promote as promote_versions
    decision = promote_versions(model_name, metric=metric, alias=alias, margin=margin, challenger=challenger or None)
    click.echo(decision.reason)
    if decision.winner is not None:
        click.echo(f"@{alias} -> v{decision.winner.version if decision.promote else decision.champion_before}")


# --- inference ------------------------------------------------------------------------------------------

@main.command()
@click.option("--model-uri", required=True, help="models:/pneumonia-classifier@champion, runs:/<id>/model, ...")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="Write the predictions as CSV here.")
@click.option("--threshold", type=click.FloatRange(0, 1), help="Override the model's validation threshold.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(model_uri, paths, out, threshold, batch_size, device, quiet):
    """Predict image files and folders (recursively); unreadable files are listed with their reason."""
    from .batch import predict_files
    frame = predict_files(model_uri, paths, threshold=threshold, batch_size=batch_size, device=device,
                          progress=not quiet)
    failed = frame[frame["error"] != ""]
    if out:
        frame.to_csv(out, index=False)
    else:
        click.echo(frame.drop(columns=["error"] if failed.empty else []).to_string(index=False))
    click.echo(f"{len(frame) - len(failed)} predicted, {len(failed)} failed"
               + (f" (listed in {out})" if out and len(failed) else "") + f"; {NOTICE}", err=True)
    for row in failed.itertuples():
        click.echo(f"FAIL {row.error}", err=True)
    sys.exit(1 if len(failed) else 0)


@main.command()
@click.option("--model-uri", required=True)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNG overlays.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
def explain(model_uri, paths, out, device):
    """Grad-CAM overlays (PNG, one per image) for any image the reader accepts."""
    from .batch import explain_files
    written, failures = explain_files(model_uri, paths, Path(out), device=device)
    for path in written:
        click.echo(f"OK   {path}")
    for message in failures:
        click.echo(f"FAIL {message}", err=True)
    click.echo(f"{len(written)} overlays written to {out}, {len(failures)} failed; {NOTICE}", err=True)
    sys.exit(1 if failures else 0)


# --- data -----------------------------------------------------------------------------------------------

@main.group()
def data():
    """Write, check and audit data sets."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (Kermany layout).")
@click.option("--train", "n_train", default=200, show_default=True, type=click.IntRange(2))
@click.option("--val", "n_val", default=16, show_default=True, type=click.IntRange(2))
@click.option("--test", "n_test", default=100, show_default=True, type=click.IntRange(2))
@click.option("--size", default=None, type=click.IntRange(64, 4096), help="Nominal long side in px [512].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--difficulty", default=None, type=click.FloatRange(0, 1),
              help="Lesion conspicuity and size: 0 obvious .. 1 subtle [synthetic.DEFAULT_DIFFICULTY].")
@click.option("--format", "image_format", default="png", type=click.Choice(["png", "jpeg"]), show_default=True)
@click.option("--workers", default=0, type=click.IntRange(0), help="Processes (0 = one per core).")
def data_synth(out, n_train, n_val, n_test, size, seed, difficulty, image_format, workers):
    """Write the synthetic radiographs (with lesion masks under masks/) in the Kermany layout."""
    from . import synthetic
    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise ConfigError(f"{out}: folder exists and is not empty")
    frame = synthetic.write_dataset(
        out_path, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
        size=size or synthetic.DEFAULT_SIZE,
        difficulty=synthetic.DEFAULT_DIFFICULTY if difficulty is None else difficulty,
        image_format=image_format, workers=workers or os.cpu_count() or 1)
    click.echo(f"wrote {len(frame)} images to {out_path} (masks in {out_path / 'masks'}, manifest.csv)")


@data.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--size", default=224, show_default=True, type=click.IntRange(16), help="Decode and resize to PX.")
def data_check(paths, size):
    """Decode every file with the training loader: one line per file; exit 1 if any fails."""
    from .inputs import expand_paths
    from .io import ImageReadError, read_xray
    from .preprocess import resize_xray

    files, missing = expand_paths(paths)
    failed = len(missing)
    for path in missing:
        click.echo(f"FAIL {path}: no such file or folder")
    for path in files:
        try:
            image = read_xray(path)
            resize_xray(image, size)
            click.echo(f"OK   {path} {image.shape[1]}x{image.shape[0]}")
        except ImageReadError as e:
            failed += 1
            click.echo(f"FAIL {e}")
    click.echo(f"{len(files) + len(missing) - failed} ok, {failed} failed", err=True)
    sys.exit(1 if failed or not files else 0)


@data.command("audit")
@click.argument("root", type=click.Path(exists=True))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the findings as JSON.")
def data_audit(root, json_path):
    """Leakage, duplicates and shortcuts of a Kermany-layout folder; exit 1 on leakage or cross-split duplicates."""
    from .audit import audit_folder, format_report
    report = audit_folder(Path(root))
    click.echo(format_report(report))
    if json_path:
        import json
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    sys.exit(1 if report.leaky else 0)


@data.command("realism")
@click.option("--synthetic", "synthetic_dir", type=click.Path(exists=True, file_okay=False),
              help="A folder of synthetic images (e.g. from data synth) [rendered in memory].")
@click.option("--real", "real_dir", type=click.Path(exists=True, file_okay=False),
              help="A folder of real radiographs [the samples shipped in pneumo_ml/samples].")
@click.option("--n", "n_synthetic", default=64, show_default=True, type=click.IntRange(4),
              help="Cases to render when --synthetic is not given.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--difficulty", default=None, type=click.FloatRange(0, 1), help="For rendered cases [the default].")
def data_realism(synthetic_dir, real_dir, n_synthetic, seed, difficulty):
    """How far synthetic images are from real ones: a real-vs-synthetic classifier's cross-validated AUC
    on intensity statistics and the radial power spectrum (0.5: indistinguishable; 1: always told apart)."""
    from . import realism, synthetic
    real = realism.read_images(Path(real_dir) if real_dir else realism.REAL_SAMPLES)
    if synthetic_dir:
        fake = realism.read_images(Path(synthetic_dir))
    else:
        fake = realism.synthetic_images(n_synthetic, seed=seed, size=synthetic.DEFAULT_SIZE,
                                        difficulty=synthetic.DEFAULT_DIFFICULTY if difficulty is None else difficulty)
    if len(real) < 2 or len(fake) < 2:
        raise ConfigError(f"need at least 2 real and 2 synthetic images, found {len(real)} and {len(fake)}")
    auc = realism.realism_auc(real, fake)
    click.echo(f"real-vs-synthetic AUC {auc:.2f} ({len(real)} real, {len(fake)} synthetic images; linear model, "
               f"5-fold CV, on intensity statistics and radial power spectrum; 0.5 = indistinguishable)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=7860, show_default=True, type=int)
@click.option("--model-name", default="pneumonia-classifier", show_default=True)
@click.option("--share", is_flag=True, help="Ask Gradio for a public share link (off by default).")
def demo(host, port, model_name, share):
    """The Gradio demo (needs the [demo] extra): upload an X-ray, see label, confidence and Grad-CAM."""
    from .demo import launch
    launch(host=host, port=port, model_name=model_name, share=share)


@main.command()
@bool_option("quick", "Small sizes: a check that the benchmark runs, in a minute or two.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON.")
@click.option("--models", default=None, help="Comma-separated subset of models [all four].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--skip-suite", is_flag=True, help="Leave out the whole-suite timing.")
def bench(quick, no_quick, json_path, models, device, skip_suite):
    """Throughput of the model alone vs the real data path, pyfunc latency, and the suite's wall time."""
    from .bench import format_table, run_bench
    report = run_bench(quick=bool(_flag(quick, no_quick)), models=models.split(",") if models else None,
                       device=device, suite=not skip_suite)
    click.echo(format_table(report))
    if json_path:
        import json
        Path(json_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

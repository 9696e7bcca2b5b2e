"""`pneumo-ml` commands: parse, call, print. No logic lives here."""
from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .config import DEVICES, LOSSES, PRETRAINED, SAMPLERS, Config, parse_bool
from .errors import ConfigError, UserError
from .io import ImageReadError
from .vocabulary import MODEL_NAME, NOTICE, PROMOTION_DEFAULTS, STUDY_SPLIT, VALIDATION_METRICS


class Optional_(click.ParamType):
    """A typed value where an empty string means 'not given' (MLproject passes '' for unset parameters)."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = inner.name

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, *args, **kwargs):
        return self.inner.get_metavar(*args, **kwargs)  # a Choice lists its choices, not CHOICE


class Bool(click.ParamType):
    name = "true|false"

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        try:
            return parse_bool(value)
        except ConfigError:
            self.fail(f"expected true or false, got {value!r}", param, ctx)


def bool_option(name: str, help: str, default: str = "false"):
    """`--x`, `--x true|false` (as MLproject passes it) and `--no-x`."""
    def decorate(f):
        f = click.option(f"--no-{name}", f"no_{name.replace('-', '_')}", is_flag=True, default=False,
                         help=f"Same as --{name} false.")(f)
        return click.option(f"--{name}", name.replace("-", "_"), type=Bool(), is_flag=False, flag_value="true",
                            default=None, help=help, show_default=default)(f)
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
        except click.UsageError as e:  # one line, not click's usage block
            where = e.ctx.command_path if e.ctx else "pneumo-ml"
            click.echo(f"error: {e.format_message()} (see {where} --help)", err=True)
            sys.exit(e.exit_code)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except (UserError, ImageReadError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except Exception as e:  # last resort: name it in one line, PNEUMO_ML_DEBUG=1 re-raises it
            if os.environ.get("PNEUMO_ML_DEBUG"):
                raise
            from .engine import NonFiniteLossError
            prefix = "error" if isinstance(e, NonFiniteLossError) else f"error ({e.__class__.__name__})"
            click.echo(f"{prefix}: {str(e).splitlines()[0] if str(e) else ''} "
                       f"(set PNEUMO_ML_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="pneumo-ml", prog_name="pneumo-ml")
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

def from_yaml(key: str) -> str:
    """What --help shows as the default of a train option: the experiment YAML decides, else the config's own."""
    return f"experiment YAML, else {getattr(Config, key)}"


@main.command()
@click.option("--config", "config_path", type=Optional_(click.Path(dir_okay=False)),
              help="Experiment YAML.", show_default="experiments/<model>[_aug|_noaug].yaml")
@click.option("--model", type=Optional_(click.STRING), show_default=from_yaml("model"),
              help="small_cnn, resnet50, vit_tiny or densenet121, or a display name: SmallCNN, ResNet50_Aug, "
                   "ResNet50_NoAug, ViT_Tiny, DenseNet121.")
@bool_option("aug", "Train with the study's augmentations (flip, rotation ±10°, brightness ±20 %).", from_yaml("aug"))
@click.option("--data", type=Optional_(click.STRING), show_default=from_yaml("data"),
              help="'synthetic', a Kermany-layout folder or a CSV manifest.")
@click.option("--epochs", type=Optional_(click.INT), show_default=from_yaml("epochs"), help="Training epochs.")
@click.option("--batch-size", type=Optional_(click.INT), show_default=from_yaml("batch_size"),
              help="Global batch size.")
@click.option("--lr", type=Optional_(click.FLOAT), show_default=from_yaml("lr"), help="Adam learning rate.")
@click.option("--image-size", type=Optional_(click.INT), show_default=from_yaml("image_size"),
              help="Square input size in px.")
@click.option("--pretrained", type=Optional_(click.Choice(PRETRAINED, case_sensitive=False)),
              show_default=from_yaml("pretrained"),
              help="ImageNet weights: auto = when they can be had offline, else random (logged).")
@click.option("--weights", type=Optional_(click.STRING), show_default="none",
              help="A local state dict / timm checkpoint to start from.")
@click.option("--loss", type=Optional_(click.Choice(LOSSES)), show_default=from_yaml("loss"),
              help="Training loss.")
@click.option("--sampler", type=Optional_(click.Choice(SAMPLERS, case_sensitive=False)),
              show_default=from_yaml("sampler"),
              help="balanced: class-balanced batches, minority images augmented more (for imbalanced data).")
@click.option("--seed", type=Optional_(click.INT), show_default=from_yaml("seed"), help="Seed of every random draw.")
@click.option("--device", type=Optional_(click.Choice(DEVICES)), show_default=from_yaml("device"),
              help="auto = CUDA when available.")
@click.option("--n-train", type=Optional_(click.INT), show_default=from_yaml("n_train"),
              help="Training images (half per class; 0 = all).")
@click.option("--n-val", type=Optional_(click.INT), show_default=from_yaml("n_val"),
              help="Validation images (half per class; 0 = all).")
@click.option("--n-test", type=Optional_(click.INT), show_default=from_yaml("n_test"),
              help="Test images (half per class; 0 = all).")
@bool_option("quick", "Shrink sizes as `suite --quick` does (the suite YAML's quick: block); options given win.")
@bool_option("register", f"Register the model as a new version of {MODEL_NAME}.", "true")
@bool_option("skip-bad", "Skip unreadable images (listed in data/skipped.csv) instead of stopping.")
@bool_option("allow-leaks", "Train even if the split shares files or bytes across splits (listed in data/leaks.txt).")
@bool_option("compile", "torch.compile the model.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", show_default="none",
              help="Any other config key, e.g. --set patience=2.")
@click.option("--resume", "resume_run_id", type=Optional_(click.STRING), show_default="none",
              help="Continue a killed run by its id.")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
def train(config_path, sets, resume_run_id, quiet, no_aug, no_register, no_skip_bad, no_allow_leaks, no_compile,
          quick, no_quick, **options):
    """Train one experiment as one MLflow run."""
    from . import config as config_mod
    from .suggest import resolve_model
    from .train import run_experiment, summary_table

    options["aug"] = _flag(options["aug"], no_aug)
    options["model"], named_aug = resolve_model(options["model"])
    options["aug"] = named_aug if options["aug"] is None else options["aug"]
    if _flag(quick, no_quick):
        options.update({k: v for k, v in quick_overrides().items() if options.get(k) is None})
    options["register"] = _flag(options.pop("register"), no_register)
    options["skip_bad"] = _flag(options.pop("skip_bad"), no_skip_bad)
    options["allow_leaks"] = _flag(options.pop("allow_leaks"), no_allow_leaks)
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


def quick_overrides() -> dict:
    """The suite's --quick shrink (experiments/suite.yaml, quick: block), for one experiment."""
    from . import config as config_mod
    from .suite import load_suite
    return dict(load_suite(config_mod.experiment_path("suite")).quick)


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
              help="Suite YAML.", show_default="experiments/suite.yaml")
@bool_option("quick", "Shrink sizes (the suite YAML's quick: block) for a smoke run.")
@click.option("--resume", "resume_run_id", type=Optional_(click.STRING), show_default="none",
              help="Continue an interrupted suite by its parent run id (finished children are kept).")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
def suite(config_path, quick, no_quick, resume_run_id, quiet):
    """The study's four experiments as child runs of one parent run, compared, registered, champion promoted."""
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
@click.option("--model-name", default=MODEL_NAME, show_default=True, help="Registered model.")
@click.option("--metric", default=PROMOTION_DEFAULTS["metric"], show_default=True,
              help=f"{', '.join(VALIDATION_METRICS)}.")
@click.option("--alias", default=PROMOTION_DEFAULTS["alias"], show_default=True, help="Alias of the winner.")
@click.option("--margin", default=PROMOTION_DEFAULTS["margin"], show_default=True, type=float,
              help="Promote only when the winner beats the current alias holder by this much.")
@click.option("--challenger", default=PROMOTION_DEFAULTS["challenger"], show_default=True,
              help="Alias for the runner-up ('' for none).")
def promote(model_name, metric, alias, margin, challenger):
    """Point @champion at the registered version with the best validation metric."""
    from .tracking import promote as promote_versions
    decision = promote_versions(model_name, metric=metric, alias=alias, margin=margin, challenger=challenger or None)
    click.echo(decision.reason)
    if decision.winner is not None:
        click.echo(f"@{alias} -> v{decision.winner.version if decision.promote else decision.champion_before}")


@main.command()
@click.option("--model-uri", "model_uris", required=True, multiple=True,
              help=f"A member: models:/{MODEL_NAME}/3, runs:/<id>/model, ... (two or more, repeated).")
@click.option("--name", default="Ensemble", show_default=True, help="The run's name and the version's experiment tag.")
@bool_option("register", "Register the ensemble as a version of the registered model.", default="true")
@click.option("--model-name", default=MODEL_NAME, show_default=True, help="Registered model.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(1),
              help="Patient-level bootstrap resamples for the intervals.")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the bootstrap.")
def ensemble(model_uris, name, register, no_register, model_name, bootstrap, seed):
    """Combine logged models (the mean of their probabilities) into one model, evaluated on the split their
    runs used, with the same metrics and intervals as any model; logged as one pyfunc and registered."""
    from .ensemble_run import build_ensemble
    from .ensemble_run import summary as ensemble_summary
    register = _flag(True if register is None else register, no_register)
    result = build_ensemble(list(model_uris), name=name, register=register, registered_model_name=model_name,
                            bootstrap=bootstrap, seed=seed)
    click.echo(ensemble_summary(result))
    click.echo(NOTICE)


# --- inference ------------------------------------------------------------------------------------------

@main.command()
@click.option("--model-uri", required=True, help=f"models:/{MODEL_NAME}@champion, runs:/<id>/model, ...")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), show_default="stdout",
              help="Write the predictions as CSV here.")
@click.option("--threshold", type=click.FloatRange(0, 1), show_default="the model's validation threshold",
              help="PNEUMONIA when P(pneumonia) >= this.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per forward pass.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(DEVICES),
              help="Where the model runs.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(model_uri, paths, out, threshold, batch_size, device, quiet):
    """Predict image files and folders (recursively) as CSV; unreadable files are listed with their reason."""
    from .batch import predict_files
    from .inputs import check_output_file
    if out:
        check_output_file(out)
    frame = predict_files(model_uri, paths, threshold=threshold, batch_size=batch_size, device=device,
                          progress=not quiet)
    failed = frame[frame["error"] != ""]
    if out:
        frame.to_csv(out, index=False)
    else:
        click.echo(frame.to_csv(index=False), nl=False)
    warned = int((frame["warning"].fillna("") != "").sum())
    click.echo(f"{len(frame) - len(failed)} predicted ({warned} with a warning), {len(failed)} failed"
               + (f" (listed in {out})" if out and len(failed) else "") + f"; {NOTICE}", err=True)
    for row in failed.itertuples():
        click.echo(f"FAIL {row.error}", err=True)
    sys.exit(1 if len(failed) else 0)


@main.command()
@click.option("--model-uri", required=True, help=f"models:/{MODEL_NAME}@champion, runs:/<id>/model, ...")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNG overlays.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(DEVICES),
              help="Where the model runs.")
def explain(model_uri, paths, out, device):
    """Grad-CAM overlays (PNG, one per image) for any image the reader accepts."""
    from .batch import explain_files
    from .inputs import check_output_folder
    check_output_folder(out)
    written, failures, warnings_ = explain_files(model_uri, paths, Path(out), device=device)
    for path in written:
        click.echo(f"OK   {path}")
    for message in warnings_:
        click.echo(f"WARN {message}", err=True)
    for message in failures:
        click.echo(f"FAIL {message}", err=True)
    click.echo(f"{len(written)} overlays written to {out}, {len(failures)} failed; {NOTICE}", err=True)
    sys.exit(1 if failures else 0)


@main.command("request")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--threshold", type=click.FloatRange(0, 1), show_default="the model's validation threshold",
              help="Param threshold: PNEUMONIA when P(pneumonia) >= this.")
@click.option("--gradcam", is_flag=True, help="Param gradcam: a base64 PNG overlay per row.")
@click.option("--errors", type=click.Choice(["request", "row"]), default="request",
              help="Param errors: a bad row fails the request, or only its own row.")
def request_(paths, threshold, gradcam, errors):
    """Print the JSON body of a REST request (POST /invocations) for image files and folders."""
    import json

    from .payload import request_body
    params = {"threshold": threshold, "gradcam": gradcam or None, "errors": None if errors == "request" else errors}
    click.echo(json.dumps(request_body(paths, {k: v for k, v in params.items() if v is not None})))


@main.command()
def samples():
    """Print the paths of the real radiographs installed with the package (NORMAL and PNEUMONIA)."""
    from .payload import SAMPLES
    for path in sorted(SAMPLES.glob("*/*.jpeg")):
        click.echo(path)


# --- data -----------------------------------------------------------------------------------------------

@main.group()
def data():
    """Write, check and audit data sets."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write (Kermany layout).")
@click.option("--train", "n_train", default=STUDY_SPLIT["n_train"], show_default=True, type=click.IntRange(2),
              help="Train images (half per class).")
@click.option("--val", "n_val", default=STUDY_SPLIT["n_val"], show_default=True, type=click.IntRange(2),
              help="Validation images (half per class).")
@click.option("--test", "n_test", default=STUDY_SPLIT["n_test"], show_default=True, type=click.IntRange(2),
              help="Test images (half per class).")
@click.option("--size", default=None, type=click.IntRange(64, 4096), help="Nominal long side in px.",
              show_default="512")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generator.")
@click.option("--difficulty", default=None, type=click.FloatRange(0, 1),
              help="Lesion conspicuity and size: 0 obvious .. 1 subtle.", show_default="the generator's default")
@click.option("--format", "image_format", default="png", type=click.Choice(["png", "jpeg"]), show_default=True,
              help="Image file format.")
@click.option("--workers", default=0, type=click.IntRange(0), help="Processes (0 = one per core).",
              show_default=True)
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
    if not files and not missing:
        raise ConfigError(f"no images found in {', '.join(paths)}")
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
@click.argument("root", type=click.Path())
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the findings as JSON.",
              show_default="none")
def data_audit(root, json_path):
    """Leakage, duplicates and shortcuts of a Kermany-layout folder; exit 1 on leakage or cross-split duplicates."""
    from .audit import audit_folder, format_report
    if not Path(root).is_dir():
        raise ConfigError(f"{root}: {'not a folder' if Path(root).exists() else 'no such folder'}")
    report = audit_folder(Path(root))
    click.echo(format_report(report))
    if json_path:
        import json
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2, default=str))
    sys.exit(1 if report.leaky else 0)


@data.command("realism")
@click.option("--synthetic", "synthetic_dir", type=click.Path(exists=True, file_okay=False),
              show_default="rendered in memory", help="A folder of synthetic images (e.g. from data synth).")
@click.option("--real", "real_dir", type=click.Path(exists=True, file_okay=False),
              show_default="the samples installed with the package", help="A folder of real radiographs.")
@click.option("--n", "n_synthetic", default=64, show_default=True, type=click.IntRange(4),
              help="Cases to render when --synthetic is not given.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the rendered cases.")
@click.option("--difficulty", default=None, type=click.FloatRange(0, 1), show_default="the generator's default",
              help="Difficulty of the rendered cases.")
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


@main.group()
def store():
    """The default SQLite tracking store."""


@store.command("repair")
def store_repair():
    """Finish a schema migration an earlier crash interrupted (drops its leftover tables, then upgrades)."""
    from .tracking import repair_store, tracking_uri
    dropped = repair_store()
    click.echo(f"{tracking_uri()}: " + (f"dropped {', '.join(dropped)}; " if dropped else "nothing left over; ")
               + "schema up to date")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=7860, show_default=True, type=int, help="Port to listen on.")
@click.option("--model-name", default=MODEL_NAME, show_default=True, help="Registered model to offer.")
@click.option("--share", is_flag=True, help="Ask Gradio for a public share link (off by default).")
def demo(host, port, model_name, share):
    """The Gradio demo (needs the [demo] extra): upload an X-ray, see label, confidence and Grad-CAM."""
    from .demo import launch
    launch(host=host, port=port, model_name=model_name, share=share)


@main.command()
@bool_option("quick", "Small sizes: a check that the benchmark runs, in a minute or two.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON.",
              show_default="none")
@click.option("--models", default=None, help="Comma-separated subset of models (keys or display names).",
              show_default="all four")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES),
              help="Where to measure.")
@click.option("--skip-suite", is_flag=True, help="Leave out the whole-suite timing.")
def bench(quick, no_quick, json_path, models, device, skip_suite):
    """Throughput of the model alone vs the real data path, pyfunc latency, and the suite's wall time."""
    from .bench import format_table, run_bench
    from .suggest import resolve_model
    report = run_bench(quick=bool(_flag(quick, no_quick)),
                       models=[resolve_model(m.strip())[0] for m in models.split(",")] if models else None,
                       device=device, suite=not skip_suite)
    click.echo(format_table(report))
    if json_path:
        import json
        Path(json_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

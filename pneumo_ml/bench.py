"""`pneumo-ml bench`: how fast the project's real paths run on the machine at hand (CPU or CUDA), side by side.

1. Model-only training throughput: random, already-normalised tensors already on the device; the trainer's step
   (Adam, cross-entropy, bf16 autocast + channels_last on CUDA) without any data path.
2. End-to-end training throughput through the real path: JPEG files on disk -> `DecodedCache.load` (parallel
   decode) -> `BatchLoader` -> device -> `BatchTransform(augment=True)` -> `engine.train_one_epoch`. The first
   epoch runs on a cold cache (decode included), later epochs on the warm one.
3. Inference throughput (batch 32, eval, no grad) and the latency of the project's real pyfunc, logged into a
   temporary SQLite MLflow store, on one 1,024 px JPEG and on batches of 32.
4. The whole suite's wall time and where it goes (SuiteResult.timings).

Everything is written to a temporary folder (data, decoded cache, tracking store, artifacts) that is removed
afterwards; MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI and PNEUMO_ML_CACHE are restored. Figures are shown,
never asserted: the targets are printed next to them, each marked met or missed.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .timing import stage
from .vocabulary import ARCHITECTURES, CLASSES

MODEL_NAMES = ARCHITECTURES
PYFUNC_MODELS = ("small_cnn", "resnet50")
PYFUNC_IMAGE_SIZE = 224  # the served models' input size (the study's protocol's)
PYFUNC_SOURCE_PX = 1024  # long side of the one JPEG a pyfunc call sees
INFERENCE_BATCH = 32

# Targets, printed next to the figures (never asserted by tests).
TARGET_RATIO = 0.90  # warm end-to-end >= 90 % of model-only
TARGET_DECODE_EFFICIENCY = 0.8  # cold decode >= 0.8 x N workers x single-core decode rate
TARGET_PYFUNC_P50_MS = {"small_cnn": 50.0, "resnet50": 150.0}  # one 1,024 px JPEG, on CPU
TARGET_ENSEMBLE_OVERHEAD_MS = 10.0  # an ensemble decodes once: its p50 stays under its members' sum plus this
TARGET_SUITE_S = 60.0  # the study's protocol on one H100/H200

BREAKDOWN_LABELS = {"data_s": "data (split + decode)", "train_s": "training", "evaluate_s": "evaluation",
                    "gradcam_s": "Grad-CAM", "plots_s": "plots", "model_logging_s": "MLflow model logging",
                    "comparison_s": "comparison", "other_s": "other (run setup, metrics, tables)"}


@dataclass(frozen=True)
class Sizes:
    batch_size: int
    image_size: int
    warmup_steps: int
    timed_steps: int
    e2e_images: int  # files in the end-to-end set
    e2e_source_px: int  # their nominal long side
    e2e_epochs: int  # 1 cold + the rest warm, each warm one followed by a model-only block (a round)
    single_core_files: int  # files decoded in one process for the single-core rate
    decode_files: int  # files decoded on a cold cache by the worker pool (a data set's cold pass, not a batch's)
    inference_batches: int
    pyfunc_calls: int  # single-image calls timed (after warm-up)
    pyfunc_batch_calls: int  # batch-of-32 calls timed
    pyfunc_batch_warmup: int  # batch-of-32 calls before those (the single calls already warmed the model)


def sizes_for(quick: bool, device: torch.device) -> Sizes:
    cuda = device.type == "cuda"
    if quick:
        return Sizes(batch_size=16, image_size=64, warmup_steps=3 if cuda else 2, timed_steps=10 if cuda else 4,
                     e2e_images=32, e2e_source_px=768, e2e_epochs=3, single_core_files=32, decode_files=64,
                     inference_batches=10 if cuda else 3, pyfunc_calls=30, pyfunc_batch_calls=1,
                     pyfunc_batch_warmup=0)
    # A 2-core CPU trains ResNet-50 at ~10 img/s: fewer images there keep the full benchmark near 15 minutes.
    return Sizes(batch_size=32, image_size=224, warmup_steps=10 if cuda else 2, timed_steps=30 if cuda else 4,
                 e2e_images=512 if cuda else 128, e2e_source_px=1600, e2e_epochs=4 if cuda else 5,
                 single_core_files=256, decode_files=1024 if cuda else 512, inference_batches=30 if cuda else 4,
                 pyfunc_calls=50, pyfunc_batch_calls=5, pyfunc_batch_warmup=1)


# --------------------------------------------------------------------------------------------- the run

def run_bench(quick: bool = False, models: list[str] | None = None, device: str = "auto", suite: bool = True,
              progress: bool = False) -> dict:
    """Run every measurement once and return the figures (the JSON `pneumo-ml bench --json` writes)."""
    from .devices import resolve_device

    names = _check_models(models)
    dev = resolve_device(device)
    sizes = sizes_for(quick, dev)
    report: dict = {
        "device": device_name(dev), "device_type": dev.type, "quick": bool(quick),
        "batch_size": sizes.batch_size, "image_size": sizes.image_size, "models": {},
        "cpu_count": os.cpu_count() or 1, "torch": torch.__version__, "machine": platform.platform(),
        "torch_threads": torch.get_num_threads(), "load_avg_1m_at_start": _load_average(),
    }
    from . import tracking  # mlflow loads only when the benchmark runs, not for `pneumo-ml --help`
    stages: dict[str, float] = {}  # where the benchmark's own time goes
    report["bench_stage_s"] = stages
    with tempfile.TemporaryDirectory(prefix="pneumo-ml-bench-") as tmp_name, tracking.isolated_store(Path(tmp_name)):
        tmp = Path(tmp_name)
        _say(progress, f"bench on {report['device']} ({dev.type}); writing the end-to-end set")
        with stage(stages, "write_e2e_set"):
            all_paths, all_targets = _write_jpeg_set(tmp / "e2e", max(sizes.e2e_images, sizes.decode_files),
                                                     sizes.e2e_source_px)
        paths, targets = all_paths[:sizes.e2e_images], all_targets[:sizes.e2e_images]
        report["e2e_set"] = {"images": len(paths), "nominal_px": sizes.e2e_source_px, "format": "jpeg",
                             "mean_file_kib": round(float(np.mean([os.path.getsize(p) for p in paths])) / 1024, 1)}
        report["decode_workers"] = _decode_workers()
        with stage(stages, "decode"):
            report["decode_single_core_img_per_s"] = decode_single_core(all_paths[:sizes.single_core_files],
                                                                        sizes.image_size)
            report["decode_files"] = len(all_paths[:sizes.decode_files])
            report["decode_parallel_img_per_s"] = decode_parallel(all_paths[:sizes.decode_files], sizes.image_size)
        with stage(stages, "components"):
            report["components"] = data_path_components(paths, targets, sizes, dev)
        for name in names:
            _say(progress, f"{name}: end-to-end, model-only, inference")
            with stage(stages, name):
                report["models"][name] = bench_model(name, paths, targets, sizes, dev)
        wanted = [m for m in PYFUNC_MODELS if m in names]
        report["pyfunc"] = {}
        if wanted:
            jpeg = xray_jpeg(PYFUNC_SOURCE_PX)
            report["pyfunc_input"] = {"long_side_px": PYFUNC_SOURCE_PX, "bytes": len(jpeg),
                                      "model_image_size": PYFUNC_IMAGE_SIZE, "device": "cpu"}
            for name in wanted:
                _say(progress, f"{name}: pyfunc latency")
                with stage(stages, f"pyfunc_{name}"):
                    report["pyfunc"][name] = bench_pyfunc(name, jpeg, tmp / f"pyfunc-{name}", sizes)
            if len(wanted) > 1:
                _say(progress, f"ensemble of {', '.join(wanted)}: pyfunc latency")
                with stage(stages, "pyfunc_ensemble"):
                    ensemble = bench_ensemble_pyfunc(wanted, jpeg, tmp, sizes)
                members = sum(report["pyfunc"][n]["p50_ms"] for n in wanted)
                report["pyfunc_ensemble"] = {**ensemble, "members_p50_sum_ms": members,
                                             "target_p50_ms": members + TARGET_ENSEMBLE_OVERHEAD_MS}
        first = report["pyfunc"].get("small_cnn") or next(iter(report["pyfunc"].values()), {})
        report["pyfunc_p50_ms"] = first.get("p50_ms")
        report["pyfunc_p95_ms"] = first.get("p95_ms")
        report["pyfunc_batch32_img_per_s"] = first.get("batch32_img_per_s")
        report["suite_wall_s"], report["suite_breakdown_s"] = None, {}
        if suite:
            _say(progress, "suite" + (" (quick)" if quick else ""))
            with stage(stages, "suite"):
                report.update(bench_suite(quick, dev.type, progress))
    report["load_avg_1m_at_end"] = _load_average()
    return report


def bench_model(name: str, paths: list[str], targets: np.ndarray, sizes: Sizes, device: torch.device) -> dict:
    from .models import create_model

    torch.manual_seed(0)
    model = create_model(name, pretrained="false", image_size=sizes.image_size)
    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last) if cuda else model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss().to(device)
    rounds = end_to_end(model, optimizer, loss_fn, paths, targets, sizes, device)
    inference = inference_img_per_s(model, sizes, device)
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return {**rounds, "inference_img_per_s": inference}


def model_only_img_per_s(model, optimizer, loss_fn, sizes: Sizes, device: torch.device,
                         warmup: bool = True) -> float:
    """The trainer's step on random tensors already on the device (no host sync inside the timed steps)."""
    from .engine import train_step

    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(sizes.batch_size, 3, sizes.image_size, sizes.image_size, generator=g).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (sizes.batch_size,), generator=g).to(device)
    model.train()

    def step():
        train_step(model, x, y, optimizer, loss_fn)

    for _ in range(sizes.warmup_steps if warmup else 0):
        step()
    seconds = _timed(step, sizes.timed_steps, device)
    return sizes.batch_size * sizes.timed_steps / seconds


def end_to_end(model, optimizer, loss_fn, paths: list[str], targets: np.ndarray, sizes: Sizes,
               device: torch.device) -> dict:
    """Epochs through the real path, each one `DecodedCache.load` + `engine.train_one_epoch`, on a cache made
    fresh for this model, with the model-only step timed right after every warm epoch.

    Epoch 1 finds the cache cold (every file hashed and decoded in worker processes); later epochs find it warm
    (memory hits, nothing decoded). Per epoch: seconds, the decode part, and the cache statistics it moved.
    Timing the two side by side, round after round, keeps a shared machine's drift out of their ratio: the
    ratio is the median of the rounds' ratios (measured in two separate blocks, CPU ratios swung 78-129 %).
    """
    from . import engine
    from .cache import DecodedCache
    from .loaders import BatchLoader
    from .models import normalization
    from .transforms import BatchTransform

    cache = DecodedCache()  # memory only, fresh: the first load is cold
    mean, std = normalization(model)
    transform = BatchTransform(mean, std, augment=True, channels_last=device.type == "cuda")
    epochs = []
    n = len(paths)
    for epoch in range(sizes.e2e_epochs):
        before = (cache.stats.decoded, cache.stats.memory_hits, cache.stats.disk_hits)
        _sync(device)
        start = time.perf_counter()
        images, failures = cache.load(paths, sizes.image_size, workers=0, progress=False)
        decoded_at = time.perf_counter()
        if failures:
            raise RuntimeError(f"bench: {len(failures)} files failed to decode: {failures[0].reason}")
        loader = BatchLoader(images, targets, sizes.batch_size, shuffle=True, seed=0, device=device)
        result = engine.train_one_epoch(model, loader, optimizer, loss_fn, transform, epoch=epoch, seed=0,
                                        amp=True, progress=False)
        _sync(device)
        seconds = time.perf_counter() - start
        epochs.append({"cold": epoch == 0, "images": int(result["images"]), "seconds": seconds,
                       "decode_s": decoded_at - start, "train_s": seconds - (decoded_at - start),
                       "img_per_s": n / seconds,
                       "decoded": cache.stats.decoded - before[0], "memory_hits": cache.stats.memory_hits - before[1],
                       "disk_hits": cache.stats.disk_hits - before[2]})
        if epoch > 0:
            epochs[-1]["model_only_img_per_s"] = model_only_img_per_s(model, optimizer, loss_fn, sizes, device,
                                                                      warmup=epoch == 1)
    cold, warm = epochs[0], epochs[1:]
    return {"cold_epoch_img_per_s": cold["img_per_s"], "cold_epoch_decode_img_per_s": n / cold["decode_s"],
            "end_to_end_img_per_s": statistics.median(e["img_per_s"] for e in warm),
            "model_only_img_per_s": statistics.median(e["model_only_img_per_s"] for e in warm),
            "ratio": statistics.median(e["img_per_s"] / e["model_only_img_per_s"] for e in warm), "epochs": epochs}


def inference_img_per_s(model, sizes: Sizes, device: torch.device) -> float:
    """Batches of 32 through the model in eval mode, no grad (autocast + channels_last on CUDA)."""
    from .engine import autocast

    model.eval()
    x = torch.randn(INFERENCE_BATCH, 3, sizes.image_size, sizes.image_size,
                    generator=torch.Generator().manual_seed(2)).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def step():
        with autocast(device, True):
            model(x)

    for _ in range(max(2, sizes.warmup_steps)):
        step()
    seconds = _timed(step, sizes.inference_batches, device)
    model.train()
    return INFERENCE_BATCH * sizes.inference_batches / seconds


def data_path_components(paths: list[str], targets: np.ndarray, sizes: Sizes, device: torch.device) -> dict:
    """The data path's pieces alone, on decoded images: BatchLoader to the device, and BatchTransform (augment)."""
    from .cache import DecodedCache
    from .loaders import BatchLoader
    from .transforms import BatchTransform

    images, _ = DecodedCache().load(paths, sizes.image_size, workers=0, progress=False)
    loader = BatchLoader(images, targets, sizes.batch_size, shuffle=True, seed=0, device=device)

    def one_pass():
        for _batch in loader:
            pass
        _sync(device)

    one_pass()
    loader_s = _timed(one_pass, 3, device)
    batch = torch.as_tensor(images[:sizes.batch_size]).to(device)
    transform = BatchTransform((0.5,) * 3, (0.5,) * 3, augment=True, channels_last=device.type == "cuda")
    rng = torch.Generator().manual_seed(3)
    for _ in range(2):
        transform(batch, rng)
    steps = max(5, sizes.timed_steps)
    transform_s = _timed(lambda: transform(batch, rng), steps, device)
    return {"loader_img_per_s": 3 * len(paths) / loader_s,
            "transform_augment_img_per_s": steps * len(batch) / transform_s}


# --------------------------------------------------------------------------------------------- decode

def decode_single_core(paths: list[str], size: int) -> float:
    """`decode_resized` (read_xray with JPEG draft mode, then resize) on the files, one after another."""
    from .preprocess import decode_resized

    decode_resized(paths[0], size)
    start = time.perf_counter()
    for path in paths:
        decode_resized(path, size)
    return len(paths) / (time.perf_counter() - start)


def decode_parallel(paths: list[str], size: int) -> float:
    """`DecodedCache.load` on a fresh (cold) cache, as a run's first pass decodes its split: hashing, the worker
    pool and collecting the results. The pool's processes are started beforehand: a run starts them once, a
    cost that a real data set's thousands of files make negligible but that would dominate a few hundred."""
    from .cache import DecodedCache

    DecodedCache().load(paths[:32], size, workers=0, progress=False)  # starts the pool's processes
    start = time.perf_counter()
    _, failures = DecodedCache().load(paths, size, workers=0, progress=False)
    seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"bench: {len(failures)} files failed to decode: {failures[0].reason}")
    return len(paths) / seconds


def _decode_workers() -> int:
    return os.cpu_count() or 1  # what DecodedCache.load uses with workers=0 (every config's default)


def _write_jpeg_set(root: Path, n: int, size: int) -> tuple[list[str], np.ndarray]:
    """A Kermany-layout synthetic set of JPEGs at ~`size` px (long side 0.85-1.0 x size)."""
    from . import synthetic

    frame = synthetic.write_dataset(root, n_train=n, n_val=2, n_test=2, seed=7, size=size, image_format="jpeg",
                                    workers=_decode_workers(), progress=False)
    train = frame[frame["split"] == "train"]
    return ([str(root / p) for p in train["path"]],
            (train["label"] == CLASSES[1]).to_numpy().astype(np.int64))


def xray_jpeg(long_side: int) -> bytes:
    """One synthetic chest X-ray as a JPEG (quality 90) whose long side is exactly `long_side` px."""
    from PIL import Image

    from . import synthetic

    image, _ = synthetic.render_case(11, 0, True, size=long_side)
    h, w = image.shape
    scale = long_side / max(h, w)
    pil = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    out = io.BytesIO()
    pil.save(out, format="JPEG", quality=90)
    return out.getvalue()


# --------------------------------------------------------------------------------------------- pyfunc

def bench_pyfunc(name: str, jpeg: bytes, folder: Path, sizes: Sizes) -> dict:
    """Log `name` (random weights) as the project's pyfunc, load it back, time predict on one JPEG and on 32."""
    from PIL import Image

    from . import tracking
    from .models import create_model, normalization
    from .predictor import ModelCard
    from .preprocess import decode_resized

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model(name, pretrained="false", image_size=PYFUNC_IMAGE_SIZE)
    mean, std = normalization(model)
    weights, card_path = folder / "weights.pt", folder / "model_card.json"
    torch.save(model.state_dict(), weights)
    ModelCard(architecture=name, image_size=PYFUNC_IMAGE_SIZE, mean=tuple(mean), std=tuple(std),
              name=f"bench {name}", weights_source="random").save(card_path)
    Image.fromarray(decode_resized(jpeg, PYFUNC_IMAGE_SIZE)).save(folder / "example.png")
    start = time.perf_counter()
    with tracking.start_run(f"bench {name}", tags={"pneumo_ml.kind": "bench"}) as run:
        uri = run.log_model({"weights": weights, "model_card": card_path}, (folder / "example.png").read_bytes())
    log_s = time.perf_counter() - start
    return {**time_pyfunc(uri, jpeg, sizes, name), "log_model_s": log_s}


def bench_ensemble_pyfunc(names: list[str], jpeg: bytes, tmp: Path, sizes: Sizes) -> dict:
    """The ensemble of the models bench_pyfunc wrote (their files under tmp/pyfunc-<name>), logged as the
    project's one pyfunc: it decodes each image once, so its p50 should stay under the members' sum + 10 ms."""
    from . import tracking
    from .ensemble import EnsembleCard, write_folder
    folder = write_folder(tmp / "pyfunc-ensemble" / "ensemble", [tmp / f"pyfunc-{n}" for n in names],
                          EnsembleCard([f"bench {n}" for n in names], name="bench ensemble"))
    example = next((tmp / f"pyfunc-{n}" / "example.png" for n in names), None)
    with tracking.start_run("bench ensemble", tags={"pneumo_ml.kind": "bench"}) as run:
        uri = run.log_model({"ensemble": folder}, example.read_bytes())
    return {"members": names, **time_pyfunc(uri, jpeg, sizes, "ensemble")}


def time_pyfunc(uri: str, jpeg: bytes, sizes: Sizes, name: str) -> dict:
    """Load a logged pyfunc, time predict on one JPEG (p50/p95 over sizes.pyfunc_calls) and on 32."""
    import pandas as pd

    from . import tracking
    start = time.perf_counter()
    pyfunc = tracking.load_pyfunc(uri)
    load_s = time.perf_counter() - start

    text = base64.b64encode(jpeg).decode("ascii")
    one = pd.DataFrame({"image": [text]})
    batch = pd.DataFrame({"image": [text] * INFERENCE_BATCH})
    for _ in range(5):
        out = pyfunc.predict(one)
    if len(out) != 1 or not 0.0 <= float(out["probability"].iloc[0]) <= 1.0:
        raise RuntimeError(f"bench: the {name} pyfunc returned {out!r}")
    latencies = []
    for _ in range(sizes.pyfunc_calls):
        start = time.perf_counter()
        pyfunc.predict(one)
        latencies.append((time.perf_counter() - start) * 1000)
    for _ in range(sizes.pyfunc_batch_warmup):
        pyfunc.predict(batch)
    start = time.perf_counter()
    for _ in range(sizes.pyfunc_batch_calls):
        pyfunc.predict(batch)
    batch_s = time.perf_counter() - start
    return {"p50_ms": float(np.percentile(latencies, 50)), "p95_ms": float(np.percentile(latencies, 95)),
            "batch32_img_per_s": INFERENCE_BATCH * sizes.pyfunc_batch_calls / batch_s,
            "calls": len(latencies), "load_model_s": load_s}


# --------------------------------------------------------------------------------------------- suite

def bench_suite(quick: bool, device: str = "auto", progress: bool = False) -> dict:
    """The suite (experiments/suite.yaml; --quick: its quick block) on a cold decoded cache, already-written data,
    on the benchmark's device.

    Writing the synthetic set (once per machine in real use) is timed apart, not in the wall time.
    """
    import dataclasses

    from . import cache as cache_mod
    from . import config as config_mod
    from .data import load_split
    from .suite import experiment_config, load_suite, run_suite

    suite = load_suite(config_mod.experiment_path("suite"))
    suite = dataclasses.replace(suite, protocol={**suite.protocol, "device": device})
    first = experiment_config(suite, suite.experiments[0], suite.seeds[0], quick=quick)
    start = time.perf_counter()
    load_split(first.data, n_train=first.n_train, n_val=first.n_val, n_test=first.n_test, seed=0,
               synthetic_difficulty=first.synthetic_difficulty)
    generation_s = time.perf_counter() - start
    with cache_mod.cold_shared_cache():  # as in a fresh `pneumo-ml suite`
        result = run_suite(suite, quick=quick, progress=progress)
    timings = dict(result.timings)
    wall = timings.pop("suite_wall_s")
    breakdown = {k: timings[k] for k in BREAKDOWN_LABELS if k in timings}
    breakdown.update({k: v for k, v in timings.items() if k not in breakdown})
    breakdown["other_s"] = max(0.0, wall - sum(breakdown.values()))
    finished = sum(o.status == "FINISHED" for o in result.outcomes)
    return {"suite_wall_s": wall, "suite_breakdown_s": breakdown,
            "suite_protocol": {k: getattr(first, k) for k in ("n_train", "n_val", "n_test", "epochs",
                                                               "image_size", "batch_size")},
            "suite_experiments": list(suite.experiments), "suite_finished": finished,
            "suite_failed": [f"{o.name}: {o.error}" for o in result.outcomes if o.status != "FINISHED"],
            "suite_synthetic_generation_s": generation_s}


# --------------------------------------------------------------------------------------------- the table

def format_table(report: dict) -> str:
    """One readable table, each target stated next to its figure and marked met or missed."""
    lines = [f"pneumo-ml bench on {report['device']} ({report.get('device_type', '?')}), "
             f"{'quick' if report['quick'] else 'full'} sizes: batch {report['batch_size']}, "
             f"{report['image_size']} px; torch {report['torch']}, {report['cpu_count']} CPUs"]
    loads = [report.get(k) for k in ("load_avg_1m_at_start", "load_avg_1m_at_end")]
    if None not in loads:  # other jobs on the machine skew every figure: say how busy it was
        lines[0] += f"; load average {loads[0]:.1f} at start, {loads[1]:.1f} at end"
    lines += ["", f"Training and inference throughput (img/s); target: warm end-to-end >= "
                  f"{TARGET_RATIO * 100:.0f} % of model-only",
              f"  {'model':<12}{'model-only':>11}{'end-to-end':>12}{'cold epoch':>12}{'ratio':>9}"
              f"{'inference':>11}  target ratio >= {TARGET_RATIO * 100:.0f} %",
              f"  {'':<12}{'':>11}{'(warm)':>12}{'':>12}{'':>9}{'(bs 32)':>11}"]
    for name, m in report["models"].items():
        verdict = _mark(m["ratio"] >= TARGET_RATIO)
        lines.append(f"  {name:<12}{m['model_only_img_per_s']:>11.1f}{m['end_to_end_img_per_s']:>12.1f}"
                     f"{m['cold_epoch_img_per_s']:>12.1f}{m['ratio'] * 100:>7.1f} %{m['inference_img_per_s']:>11.1f}"
                     f"  {verdict}")
    comp = report.get("components") or {}
    if comp:
        lines.append(f"  data path alone: BatchLoader -> device {comp['loader_img_per_s']:.0f} img/s, "
                     f"BatchTransform(augment) {comp['transform_augment_img_per_s']:.0f} img/s")
    single, parallel = report["decode_single_core_img_per_s"], report["decode_parallel_img_per_s"]
    workers = report["decode_workers"]
    needed = TARGET_DECODE_EFFICIENCY * workers * single
    e2e = report.get("e2e_set") or {}
    lines += ["", f"Decode (JPEG ~{e2e.get('nominal_px', '?')} px -> {report['image_size']} px, "
                  f"{report.get('decode_files', '?')} files)",
              f"  single core (decode_resized, one process)       {single:>9.1f} img/s",
              f"  cold cache (DecodedCache.load, {workers} workers)      {parallel:>9.1f} img/s"
              f"  = {parallel / (workers * single):.2f} x N x single-core",
              f"  target: cold decode >= {TARGET_DECODE_EFFICIENCY} x N x single-core = {needed:.1f} img/s"
              f"  {_mark(parallel >= needed)}"]
    if report.get("pyfunc"):
        info = report.get("pyfunc_input") or {}
        lines += ["", f"pyfunc (mlflow.pyfunc.load_model(...).predict, one {info.get('long_side_px', '?')} px JPEG "
                      f"of {info.get('bytes', 0) / 1024:.0f} KiB, {info.get('model_image_size', '?')} px model, CPU)"]
        for name, p in report["pyfunc"].items():
            target = TARGET_PYFUNC_P50_MS.get(name)
            verdict = f"target p50 < {target:.0f} ms  {_mark(p['p50_ms'] < target)}" if target else ""
            lines.append(f"  {name:<12} p50 {p['p50_ms']:>7.1f} ms  p95 {p['p95_ms']:>7.1f} ms  "
                         f"batch of 32 {p['batch32_img_per_s']:>7.1f} img/s  {verdict}")
    if report.get("pyfunc_ensemble"):
        e = report["pyfunc_ensemble"]
        lines.append(f"  {'ensemble':<12} p50 {e['p50_ms']:>7.1f} ms  p95 {e['p95_ms']:>7.1f} ms  "
                     f"batch of 32 {e['batch32_img_per_s']:>7.1f} img/s  target p50 < members' sum "
                     f"{e['members_p50_sum_ms']:.1f} + {TARGET_ENSEMBLE_OVERHEAD_MS:.0f} ms  "
                     f"{_mark(e['p50_ms'] < e['target_p50_ms'])}  ({' + '.join(e['members'])})")
    if report.get("suite_wall_s") is not None:
        wall = report["suite_wall_s"]
        gpu = report.get("device_type") == "cuda" and not report["quick"]
        verdict = _mark(wall < TARGET_SUITE_S) if gpu else \
            "not judged (the target is for the full protocol on one H100/H200)"
        proto = report.get("suite_protocol", {})
        lines += ["", f"Suite ({len(report.get('suite_experiments', []))} experiments, "
                      f"{proto.get('n_train')}/{proto.get('n_val')}/{proto.get('n_test')}, "
                      f"{proto.get('epochs')} epoch(s), {proto.get('image_size')} px, "
                      f"{'quick' if report['quick'] else 'study protocol'}): wall {wall:.1f} s; "
                      f"target < {TARGET_SUITE_S:.0f} s on one H100/H200: {verdict}"]
        for key, seconds in report["suite_breakdown_s"].items():
            lines.append(f"  {BREAKDOWN_LABELS.get(key, key):<36}{seconds:>8.1f} s  {seconds / wall * 100:>5.1f} %")
        lines.append(f"  (synthetic set written beforehand in {report.get('suite_synthetic_generation_s', 0):.1f} s,"
                     f" not counted; {report.get('suite_finished', 0)} of "
                     f"{len(report.get('suite_experiments', []))} experiments finished)")
        for failure in report.get("suite_failed", []):
            lines.append(f"  FAILED {failure}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- helpers

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _check_models(models: list[str] | None) -> list[str]:
    names = [m.strip() for m in (models or MODEL_NAMES) if m.strip()]
    unknown = [m for m in names if m not in MODEL_NAMES]
    if unknown or not names:
        raise ConfigError(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'} "
                          f"(choose from {', '.join(MODEL_NAMES)})")
    return list(dict.fromkeys(names))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds for `repeats` calls, synchronising the device before and after (not in between)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return time.perf_counter() - start


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _say(progress: bool, message: str) -> None:
    if progress:
        import click
        click.echo(f"bench: {message}", err=True)



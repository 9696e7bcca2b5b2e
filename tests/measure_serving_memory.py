"""Memory of `mlflow models serve` under bounded load (not a test: a measurement the README reports).

`python tests/measure_serving_memory.py WORKDIR`: trains a tiny model into WORKDIR's SQLite store, serves it,
sends one over-budget request (6 rows of a 49 MP PNG: a 400), then three rounds of 30 s of two clients sending
5 rows of that PNG each (245 MP, within the budget), printing the server's peak RSS (process tree) per round
and its RSS after each round. A leak grows round after round; a high-water mark does not.
"""
import base64
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY
from servers import model_server

SIDE = 7000  # 49 MP: just under the 50 MP per-image limit
ROUNDS, ROUND_S, CLIENTS = 3, 30, 2


def request_body(rows: int) -> str:
    image = np.add.outer(np.arange(SIDE) % 256, np.zeros(SIDE, np.uint8)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    cell = base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[cell]] * rows}})


def train_tiny_model(work: Path) -> str:
    from pneumo_ml import config
    from pneumo_ml.train import run_experiment
    cfg = config.load(config.experiment_path("small_cnn"), **{**TINY, "gradcam_images": 0})
    return f"models:/pneumonia-classifier/{run_experiment(cfg, progress=False).version}"


def load_round(server, body: str) -> None:
    stop, timings = time.monotonic() + ROUND_S, []

    def client():
        while time.monotonic() < stop:
            start = time.monotonic()
            answer = requests.post(f"{server.base}/invocations", data=body, timeout=600,
                                   headers={"Content-Type": "application/json"})
            timings.append((answer.status_code, time.monotonic() - start))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    peak = 0
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, server.rss_bytes())
        time.sleep(0.5)
    print(f"{len(timings)} requests, status {sorted({code for code, _ in timings})}, "
          f"{np.mean([s for _, s in timings]):.1f} s/request; peak RSS {peak / 2**30:.2f} GiB, "
          f"after {server.rss_bytes() / 2**30:.2f} GiB", flush=True)


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    model_uri = train_tiny_model(work)
    with model_server(model_uri, os.environ["MLFLOW_TRACKING_URI"], work) as server:
        over = requests.post(f"{server.base}/invocations", data=request_body(6), timeout=600,
                             headers={"Content-Type": "application/json"})
        print(f"6 rows of {SIDE * SIDE / 1e6:.0f} MP: HTTP {over.status_code}", flush=True)
        print(f"idle RSS {server.rss_bytes() / 2**30:.2f} GiB", flush=True)
        body = request_body(5)
        for _ in range(ROUNDS):
            load_round(server, body)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

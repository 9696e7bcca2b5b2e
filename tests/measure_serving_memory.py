"""Memory of `mlflow models serve` under bounded load (not a test: a measurement the README reports).

`python tests/measure_serving_memory.py WORKDIR`: trains a tiny model into WORKDIR's SQLite store, serves it,
sends one over-budget request (6 rows of a 49 MP PNG: a 400), then three rounds of 30 s of two clients sending
5 rows of that PNG each (245 MP, within the budget), printing the server's peak RSS (process tree) per round
and its RSS after each round. A leak grows round after round; a high-water mark does not."""
import base64, io, json, os, sys, threading, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np, requests
from PIL import Image
work = Path(sys.argv[1]); work.mkdir(exist_ok=True)
os.chdir(work)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work/'mlflow.db'}"
from conftest import TINY
from pneumo_ml import config
from pneumo_ml.train import run_experiment
from servers import model_server, tree_rss_bytes
res = run_experiment(config.load(config.experiment_path("small_cnn"), **{**TINY, "gradcam_images": 0}), progress=False)
side = 7000
img = (np.add.outer(np.arange(side) % 256, np.zeros(side, np.uint8)) ).astype(np.uint8)
buf = io.BytesIO(); Image.fromarray(img).save(buf, format="PNG", optimize=True); data = buf.getvalue()
print(f"PNG {side}x{side} = {side*side/1e6:.0f} MP, {len(data)/1024:.0f} KiB", flush=True)
cell = base64.b64encode(data).decode()
body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[cell]] * 5}})
over = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[cell]] * 6}})
with model_server(f"models:/pneumonia-classifier/{res.version}", os.environ["MLFLOW_TRACKING_URI"], work) as s:
    post = lambda b: requests.post(f"{s.base}/invocations", data=b, headers={"Content-Type": "application/json"}, timeout=600)
    r = post(over); print("6 rows:", r.status_code, r.json().get("message", "")[:160], flush=True)
    samples = []
    print(f"idle RSS {s.rss_bytes()/2**30:.2f} GiB", flush=True)
    for round_ in (1, 2, 3):
        stop = time.monotonic() + 30; codes = []
        def client():
            while time.monotonic() < stop:
                t = time.monotonic(); codes.append((post(body).status_code, time.monotonic() - t))
        threads = [threading.Thread(target=client) for _ in range(2)]
        [t.start() for t in threads]
        peak = 0
        while any(t.is_alive() for t in threads):
            peak = max(peak, s.rss_bytes()); time.sleep(0.5)
        after = s.rss_bytes()
        print(f"round {round_}: {len(codes)} requests, status {sorted({c for c, _ in codes})}, "
              f"mean {np.mean([d for _, d in codes]):.1f} s/request; peak RSS {peak/2**30:.2f} GiB, after {after/2**30:.2f} GiB", flush=True)

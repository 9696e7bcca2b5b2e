"""What reaches `mlflow models serve` before the model does: a per-request pixel budget, unknown params and
absurdly nested JSON are all 400s that say why, and the server keeps serving."""
import base64
import io
import json

import numpy as np
import pandas as pd
import requests
from conftest import SAMPLES
from PIL import Image
from servers import model_server

JPEGS = sorted(SAMPLES.rglob("*.jpeg"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def post(base: str, body) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(f"{base}/invocations", data=data, headers={"Content-Type": "application/json"}, timeout=120)


def rows(cells, params=None) -> dict:
    body = {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}
    return {**body, "params": params} if params else body


def test_a_request_of_64_chest_films_fits_the_default_budget(trained_model, monkeypatch):
    import mlflow
    uri, result = trained_model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/pneumonia-classifier/{result.version}")
    films = [b64(JPEGS[i % len(JPEGS)].read_bytes()) for i in range(64)]
    assert len(model.predict(pd.DataFrame({"image": films}))) == 64


def test_rest_budget_params_and_deep_json_are_client_errors(trained_model, tmp_path):
    uri, result = trained_model
    budget = 3 * 2000 * 2000
    with model_server(f"models:/pneumonia-classifier/{result.version}", uri, tmp_path,
                      PNEUMO_ML_MAX_REQUEST_PIXELS=budget) as server:
        film = b64(JPEGS[0].read_bytes())
        assert post(server.base, rows([b64(png(2000))] * 3)).status_code == 200  # exactly the budget
        over = post(server.base, rows([b64(png(2000))] * 3 + [film]))
        assert over.status_code == 400 and "PNEUMO_ML_MAX_REQUEST_PIXELS" in over.json()["message"], over.text
        assert f"the limit is {budget:,} per request" in over.json()["message"]

        unknown = post(server.base, rows([film], params={"treshold": 0.2}))
        assert unknown.status_code == 400 and "unknown param(s) 'treshold'" in unknown.json()["message"]

        deep = post(server.base, '{"a": ' * 100_000 + "1" + "}" * 100_000)
        assert deep.status_code == 400 and "nested too deeply" in deep.json()["message"], deep.text[:500]

        still = post(server.base, rows([film], params={"threshold": 0.2}))
        assert still.status_code == 200 and still.json()["predictions"][0]["threshold"] == 0.2

"""What a reader sees in the MLflow UI of a real `mlflow server` after a (shrunk) suite, in Chromium.

MLflow 3.17 charts the ungrouped metrics in a section of their own ("Model metrics", after the named ones) and lists
a run's metrics on its overview in the order they were first logged: the headline figures must be the ungrouped
ones and come first there; the registry page must show the model's description."""
from __future__ import annotations

import re

import yaml
from browser import CHROMIUM_ARGS, chromium_path
from conftest import TINY
from mlflow.tracking import MlflowClient
from playwright.sync_api import expect, sync_playwright
from servers import tracking_server

from pneumo_ml import tracking
from pneumo_ml.suite import load_suite, run_suite, summary


def test_run_page_opens_on_the_headline_figures_and_the_registry_shows_descriptions(tmp_path, monkeypatch):
    with tracking_server(tmp_path) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.base)
        suite = tmp_path / "suite.yaml"
        suite.write_text(yaml.safe_dump({"experiments": ["small_cnn"], "seeds": [7], "ensemble": False,
                                         "protocol": {**TINY, "pretrained": "false"}}))
        result = run_suite(load_suite(suite), progress=False)
        child = tracking.child_runs(result.run_id)[0]
        run_page = tracking.run_link(child.info.run_id)
        assert run_page.startswith(server.base + "/#/experiments/")
        headline = [k for k in child.data.metrics if tracking.is_headline(k)]
        assert {"val_auc", "test_auc", "test_auc_ci_low", "test_f1"} <= set(headline)
        sections = {k.split("/")[0] for k in child.data.metrics if not tracking.is_headline(k)}
        description = MlflowClient().get_registered_model(tracking.MODEL_NAME).description
        text = summary(result)
        report = re.search(r"^report: (.+)$", text, re.M).group(1)
        assert report == f"{tracking.run_link(result.run_id)}/artifacts/comparison/report.html"

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(120_000)  # every wait is for an element; CI runs under load

                page.goto(run_page)  # the run page opens on its overview
                expect(page.get_by_text(child.info.run_name).first).to_be_visible()
                # the run's description: what it is, its data and weights, its headline test figures
                expect(page.get_by_text("Research use, not for diagnosis", exact=False).first).to_be_visible()
                metric_links = page.locator(f'a[href$="/runs/{child.info.run_id}/model-metrics"]')
                expect(metric_links.filter(has_text=re.compile(r"^test_auc$"))).to_have_count(1)
                listed = [t.strip() for t in metric_links.all_inner_texts() if t.strip() != "Model metrics"]
                assert set(listed[:len(headline)]) == set(headline), listed  # every headline figure, then the rest
                assert all("/" in name for name in listed[len(headline):]), listed

                page.goto(f"{run_page}/model-metrics")  # the charts: the ungrouped section is the headline
                headers = page.locator('[data-testid="experiment-view-compare-runs-section-header"]')
                expect(headers.filter(has_text="Model metrics")).to_have_count(1)
                shown = dict(re.match(r"\s*([^\n(]+?)\s*\((\d+)\)", t).groups() for t in headers.all_inner_texts())
                assert int(shown.pop("Model metrics")) == len(headline), shown
                assert set(shown) <= sections | {"System metrics"}, shown

                page.goto(f"{server.base}/#/models/{tracking.MODEL_NAME}")
                expect(page.get_by_text(description[:60], exact=False)).to_be_visible()
                expect(page.get_by_text("Research use, not for diagnosis", exact=False).first).to_be_visible()
            finally:
                browser.close()

"""The offline report and the notebooks' tables (issue 21, bug 7 and the number formats of bug 6)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from widgets_fixtures import make_tiny_run

from deeplesion_lab.report import (
    FP_RATES,
    format_value,
    froc_curves,
    metric_rows,
    model_color,
    write_report,
)
from deeplesion_lab.run import RunDir

REPO = Path(__file__).resolve().parents[1]


def _result(model_sens: float, lo: float, hi: float, predictions: str | None = None) -> dict:
    sens = {f: model_sens for f in FP_RATES}
    iv = {f: [lo, hi] for f in (*FP_RATES, "mean_0.5-4")}
    out = {"sensitivity": sens, "mean_sensitivity_0_5_to_4": model_sens, "n_lesions": 38,
           "interval95": {"interval": iv, "level": 0.95, "n_boot": 1000}, "split": "test"}
    if predictions:
        out["predictions"] = predictions
    return out


@pytest.fixture(scope="module")
def run_with_metrics(tmp_path_factory) -> Path:
    tiny = make_tiny_run(tmp_path_factory.mktemp("report21"), source="hand")
    run = RunDir(tiny.run_dir)
    pred = str(run.predictions_file("pseudo", "all"))
    metrics = {
        "mining": {"k": 8, "nmi": 0.5},
        "detection": {"single": _result(0.3, 0.2, 0.4), "pseudo": _result(0.5, 0.35, 0.65, pred),
                      "pseudo-ft1": _result(0.6, 0.45, 0.75, pred)},
        "finetune": {"before": {**_result(0.5, 0.35, 0.65, pred), "model": "pseudo"},
                     "after": {**_result(0.6, 0.45, 0.75, pred), "model": "pseudo-ft1"},
                     "model": "pseudo-ft1", "parent": "pseudo", "n_labels": 40},
        "detector_training": {"single": {"epochs": 48, "checkpoint": "/x/y/model.pt",
                                         "classes": ["lesion"]}},
    }
    run.metrics.write_text(json.dumps(metrics))
    return run.path


def test_froc_curves_show_each_model_once_in_its_colour(run_with_metrics):
    metrics = json.loads(RunDir(run_with_metrics).metrics.read_text())
    curves = froc_curves(metrics)
    assert list(curves) == ["detector: single", "before fine-tuning (pseudo)",
                            "after fine-tuning (pseudo-ft1)"]
    assert model_color(curves["before fine-tuning (pseudo)"]["model"]) == model_color("pseudo")
    assert len({model_color(c["model"]) for c in curves.values()}) == 3
    # notebook 4 draws with the same curves and colours as the report
    nb = json.loads((REPO / "lab" / "04_finetune_and_compare.ipynb").read_text())
    src = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert "froc_curves(" in src and "model_color(" in src


def _pixels(data_uri: str) -> np.ndarray:
    from PIL import Image

    raw = base64.b64decode(data_uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(int)


def test_report_froc_has_bands_and_images(run_with_metrics):
    html = write_report(run_with_metrics).read_text()
    imgs = dict(re.findall(r'alt="([^"]+)" src="(data:image/png;base64,[^"]+)"', html))
    assert {"FROC", "FROC before/after", "lesions", "detections"} <= set(imgs)
    # the pseudo-label model's band: its colour at 15 % over white
    c = np.array([int(model_color("pseudo")[i:i + 2], 16) for i in (1, 3, 5)])
    band = np.round(255 - 0.15 * (255 - c))
    a = _pixels(imgs["FROC"])
    assert (np.abs(a - band).max(axis=2) <= 3).sum() > 500, "no interval band drawn"
    # other metrics: short, folded, no file paths
    other = html[html.index("Other metrics"):]
    assert "<details>" in other and "/x/y/model.pt" not in html
    assert "<td>48</td>" in other and "48.000" not in html


def test_whole_numbers_print_as_whole_numbers():
    assert format_value(16) == "16" and format_value(38) == "38"
    assert format_value(0.53219) == "0.532" and format_value(123456) == "123,456"
    df = metric_rows({"mining": {"k": 16, "nmi": 0.51234, "k_scores": [1, 2],
                                 "nested": {"a": 1}}}, ("mining",))
    assert dict(zip(df["metric"], df["value"], strict=True)) == {"k": "16", "nmi": "0.512"}

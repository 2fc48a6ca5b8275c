"""CenterNet ensembles against one model of the same (or twice the) training CPU (issue 14).

Usage::

    .venv/bin/python bench/bench_detector_ensemble.py --data DEMO_DIR --out OUT_DIR \
        MEMBER_OUT [MEMBER_OUT ...]

Each ``MEMBER_OUT`` is a candidate folder of ``bench/bench_detector_arch.py --out`` (its
``model/`` and ``result.json``) or a detector folder with ``model.pt`` (e.g. a run's
``detector/pseudo``; the ensemble then has the first member's classes, see
:class:`~deeplesion_lab.detection.ensemble.CenterNetEnsemble`). The members' head outputs are
averaged per cell
(:class:`deeplesion_lab.detection.ensemble.CenterNetEnsemble`) and the ensemble is evaluated as
``bench_detector_arch.py`` evaluates one model: the DeepLesion FROC on the val+test key slices
(and the test split alone), 95 % bootstrap interval, inference ms per slice on one thread.
``OUT_DIR`` gets ``predictions_eval.csv`` and ``result.json``, so
``bench/bench_detector_paired.py`` compares it with a single model on the same slices.
The ensemble's training CPU is the sum of its members' (``train_cpu_s`` in their results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EVAL = "val+test"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="demo folder with manifest.parquet")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("members", nargs="+", type=Path, help="bench_detector_arch candidate folders")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from deeplesion_lab.detection.bootstrap import bootstrap_sensitivity
    from deeplesion_lab.detection.ensemble import CenterNetEnsemble
    from deeplesion_lab.detection.froc import evaluate_predictions
    from deeplesion_lab.detection.train import LesionDetector
    from deeplesion_lab.manifest import read_manifest

    m = read_manifest(args.data / "manifest.parquet")
    def model_of(p: Path) -> Path:
        return p if (p / "model.pt").is_file() else p / "model"

    def result_of(p: Path) -> dict:
        if (p / "result.json").is_file():
            return json.loads((p / "result.json").read_text())
        cfg = json.loads((p / "config.json").read_text())  # a detector folder
        return {"name": p.name, "seed": cfg["params"].get("seed"), "train_cpu_s": float("nan"),
                "eval": None}

    dets = [LesionDetector.load(model_of(p), num_threads=1, progress=False)
            for p in args.members]
    ens = dets[0]
    ens.model_ = CenterNetEnsemble([d.model_ for d in dets])
    t0 = time.perf_counter()
    pred = ens.predict(m, EVAL)
    ev = evaluate_predictions(pred, m, EVAL)
    test = evaluate_predictions(pred, m, "test")
    members = [result_of(p) for p in args.members]
    result = {
        "name": "ensemble of " + " + ".join(f"{r['name']}-s{r['seed']}" for r in members),
        "members": [str(p) for p in args.members],
        "train_cpu_s": sum(float(r["train_cpu_s"]) for r in members),
        "member_4fp": [r["eval"]["sensitivity"]["4"] if r["eval"] else float("nan")
                       for r in members],
        "infer_ms_per_slice": ens.predict_ms_per_image_,
        "wall_s": time.perf_counter() - t0,
        "eval": ev.to_metrics(),
        "test": test.to_metrics(),
        "interval95": bootstrap_sensitivity(ev.curve, n_boot=2000).to_metrics(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(args.out / "predictions_eval.csv", index=False)
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    s = result["eval"]["sensitivity"]
    print(
        f"{result['name']}: 4 FP {s['4']:.3f} (members {', '.join(f'{x:.3f}' for x in result['member_4fp'])}), "
        f"mean 0.5-4 {result['eval']['mean_sensitivity_0_5_to_4']:.3f}, "
        f"{result['train_cpu_s']:.0f} training CPU-s, {result['infer_ms_per_slice']:.0f} ms/slice"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One detector configuration on demo data: train on the training key slices, score every split.

Usage::

    .venv/bin/python bench/bench_detector_configs.py --data /tmp/bench_detector/data \\
        --name J --optimizer adamw --lr 0.001 --window -160,240 --epochs 24 \\
        --size 512 --spacing 0.8 --crop 128 --box-batch 32

``--data`` is a demo dataset with ``manifest.parquet`` (``bench/bench_detector.py`` makes one in
``--out/data``). Prints one ``RESULT`` line: the name, training seconds, and per split the
sensitivities at 0.5-16 false positives per image and their mean over 0.5-4 (DeepLesion
protocol). The table of the configurations compared on 2026-11-22 is in
``bench/results/detector_configs.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/bench_detector/data"))
    ap.add_argument("--name", default="run")
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--window", default="-160,240", help="'wide' or LOW,HIGH")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--backbone", default="mobilenet_v3_large_fpn")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--spacing", type=float, default=1.6)
    ap.add_argument("--crop", type=int, default=0, help="training window (0: whole images)")
    ap.add_argument("--box-batch", type=int, default=128)
    ap.add_argument("--anchors", default="16,32,64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--norm", default="batch", choices=["batch", "group"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rpn-fg-iou", type=float, default=0.7)
    ap.add_argument("--save", type=Path, default=None, help="save the detector in this folder")
    ap.add_argument("--proposals", default="",
                    help="also score with these RPN proposal counts at inference, e.g. 1000")
    args = ap.parse_args()

    from deeplesion_lab.detection.froc import evaluate_predictions
    from deeplesion_lab.detection.train import LesionDetector
    from deeplesion_lab.manifest import read_manifest

    m = read_manifest(args.data / "manifest.parquet")
    window = "wide" if args.window == "wide" else tuple(float(v) for v in args.window.split(","))
    det = LesionDetector(
        backbone=args.backbone, image_size=args.size, spacing_mm=args.spacing,
        box_head_size=256, batch_size=args.batch, norm=args.norm, seed=args.seed,
        rpn_fg_iou=args.rpn_fg_iou, epochs=args.epochs, train_crop=args.crop or None,
        box_batch_size=args.box_batch, anchor_sizes=tuple(int(v) for v in args.anchors.split(",")),
        lr=args.lr, optimizer=args.optimizer, window=window, progress=False,
        num_threads=args.threads,
    )
    t = time.time()
    det.fit(m)
    seconds = time.time() - t
    if args.save:
        det.save(args.save)
    for proposals in [None] + [int(v) for v in args.proposals.split(",") if v]:
        if proposals:
            det.model_.rpn._pre_nms_top_n["testing"] = proposals
            det.model_.rpn._post_nms_top_n["testing"] = proposals
        pred = det.predict(m, "all")
        res = {}
        for split in ("train", "val", "test"):
            r = evaluate_predictions(pred, m, split)
            res[split] = [{k: round(v, 3) for k, v in r.sensitivity.items()},
                          round(r.mean_sensitivity_0_5_to_4, 3)]
        tag = args.name if not proposals else f"{args.name}/p{proposals}"
        print("RESULT", tag, round(seconds), json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

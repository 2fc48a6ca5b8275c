"""``deeplesion-lab evaluate-detector``: the DeepLesion FROC evaluation of a predictions CSV."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-detector",
        help="score a predictions CSV with the official DeepLesion protocol (FROC)",
        description=(
            "Score PRED.csv (file_name, x1, y1, x2, y2, score, label) against the key slices "
            "of a split of MANIFEST: a hit at IoU >= 0.5, sensitivity at 0.5, 1, 2, 4, 8 and 16 "
            "false positives per image, possibly-noisy lesions excluded, and the mean over "
            "0.5-4. Writes a FROC plot (PNG and interactive HTML) beside PRED.csv and, with "
            "--run, the numbers into RUN_DIR/metrics.json under detection.NAME."
        ),
    )
    p.add_argument("predictions", type=Path, metavar="PRED.csv")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest (.parquet); default the one the --run records in run.json")
    p.add_argument("--split", choices=["test", "val", "train", "all", "val+test"], default="test",
                   help="key slices scored (default test)")
    p.add_argument("--run", type=Path, default=None, help="run directory for metrics.json")
    p.add_argument("--name", default=None,
                   help="name in metrics.json (default: the CSV's file name without .csv)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a hit (default 0.5)")
    p.add_argument("--noisy", choices=["ignore", "drop"], default="ignore",
                   help="noisy lesions: ignore regions (default) or dropped as in the "
                        "released script (their detections then count as FPs)")
    p.add_argument("--no-plot", action="store_true", help="do not write the FROC plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..detection.froc import evaluate_predictions, read_predictions
    from ..detection.workflow import record_evaluation
    from ..errors import LabError
    from ..manifest import read_manifest
    from ..run import RunDir

    run_dir = RunDir(args.run) if args.run is not None else None
    if run_dir is not None:
        run_dir.info()
    if args.manifest is None and run_dir is None:
        raise LabError("evaluate-detector: give --manifest MANIFEST, or --run RUN_DIR to use the "
                       "manifest its run.json records")
    pred = read_predictions(args.predictions)
    manifest = read_manifest(args.manifest if args.manifest is not None else run_dir.manifest_path())
    res = evaluate_predictions(pred, manifest, args.split, iou_threshold=args.iou,
                               noisy=args.noisy)
    name = args.name or args.predictions.stem
    print(f"{name}: {res.n_lesions} lesions on {res.n_images} key slices of the {args.split} "
          f"split ({res.n_noisy_excluded} noisy excluded); {res.n_detections} detections"
          + (f" ({res.n_detections_outside} on other images, not scored)"
             if res.n_detections_outside else ""))
    print(res.table())
    if res.per_class:
        print("per class (sensitivity at 0.5 / 1 / 2 / 4 FPs per image):")
        for c, v in res.per_class.items():
            print(f"  {c:<12} " + " / ".join(f"{v[k]:.3f}" for k in ("0.5", "1", "2", "4")))
    plots = {}
    if not args.no_plot:
        from ..detection.plots import froc_html, plot_froc

        stem = args.predictions.with_suffix("")
        plots["plot_png"] = str(plot_froc({name: res}, stem.with_name(stem.name + ".froc.png")))
        html = froc_html({name: res}, stem.with_name(stem.name + ".froc.html"))
        if html is not None:
            plots["plot_html"] = str(html)
        for v in plots.values():
            print(f"wrote {v}")
    entry = record_evaluation(run_dir, name, res, predictions=str(args.predictions.resolve()),
                              **plots)
    ci = entry["interval95"]
    low, high = ci["interval"]["mean_0.5-4"]
    print(f"mean 0.5-4: {res.mean_sensitivity_0_5_to_4:.3f}, 95 % interval [{low:.3f}, "
          f"{high:.3f}] ({ci['n_boot']} bootstrap resamples of the {res.n_images} key slices)")
    if run_dir is not None:
        print(f"metrics: {run_dir.metrics} (detection.{name})")
    return 0

"""``deeplesion-lab train-detector``: train the lesion detector on a run's training key slices."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ._detector_options import add_model_arguments, add_training_arguments

    p = sub.add_parser(
        "train-detector",
        help="train a lesion detector (single class or pseudo-label classes; --arch)",
        description=(
            "Train a lesion detector (--arch: centernet by default, fasterrcnn, fcos) on the "
            "training key slices of RUN_DIR's manifest (3-slice context, spacing-normalised, windowed, augmented). "
            "--classes single: one class 'lesion'; --classes pseudo: the mined pseudo-labels "
            "of RUN_DIR/pseudo_labels.parquet as classes (the model still gives a "
            "class-agnostic lesion score); --labels TABLE: the classes of a labels table. "
            "Checkpoints go to RUN_DIR/detector/NAME/; an interrupted training resumes when the "
            "same command is run again."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory (has run.json)")
    p.add_argument("--classes", choices=["single", "pseudo", "labels"], default=None,
                   help="single (default), pseudo, or labels (with --labels)")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels table (parquet/CSV: lesion_id, label) for --classes labels")
    p.add_argument("--name", default=None,
                   help="model name under RUN_DIR/detector (default: the --classes value)")
    add_model_arguments(p)
    add_training_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..detection.dataset import mined_ignore_boxes
    from ..detection.froc import read_predictions
    from ..detection.labels_table import labels_from_pseudo, read_labels_table
    from ..detection.train import LesionDetector, select_split
    from ..detection.workflow import model_dir, set_latest
    from ..distributed import is_main
    from ..errors import LabError
    from ..run import RunDir
    from ._detector_options import params_from_args

    run_dir = RunDir(args.run)
    run_dir.info()
    classes = args.classes or ("labels" if args.labels is not None else "single")
    if classes == "labels" and args.labels is None:
        raise LabError("--classes labels needs --labels TABLE")
    if classes != "labels" and args.labels is not None:
        raise LabError(f"--labels goes with --classes labels, not --classes {classes}")
    if classes == "single":
        labels, source = None, "single class"
    elif classes == "pseudo":
        labels = labels_from_pseudo(run_dir.load_pseudo_labels(), str(run_dir.pseudo_labels))
        source = str(run_dir.pseudo_labels)
    else:
        labels = read_labels_table(args.labels)
        source = str(args.labels.resolve())
    name = args.name or classes
    folder = model_dir(run_dir, name)
    manifest = run_dir.load_manifest()
    ignore = None
    if args.ignore_from is not None:
        ignore = mined_ignore_boxes(read_predictions(args.ignore_from),
                                    select_split(manifest, "train"), args.ignore_score)
    det = LesionDetector(**params_from_args(args, new=True))
    if is_main():
        print(f"training {name} ({classes}) -> {folder}")
    det.fit(manifest, labels, checkpoint_dir=folder, resume=not args.overwrite,
            ignore_boxes=ignore,
            lineage={"labels_source": source, "label_snapshot_id": None, "run": str(run_dir.path),
                     "ignore_from": str(args.ignore_from) if args.ignore_from else None})
    if not is_main():  # under torchrun: rank 0 writes the records and reports
        return 0
    set_latest(run_dir, name)
    secs = sum(h["seconds"] for h in det.history_)
    n_img = sum(h["images"] for h in det.history_)
    ips = n_img / secs if secs else None
    run_dir.update_metrics({"detector_training": {name: {
        "classes": det.classes_, "epochs": det.epochs, "n_images": det.lineage_["n_images"],
        "n_ignore_regions": det.lineage_["n_ignore_regions"], "train_images_per_s": ips,
        "checkpoint": str(folder / "model.pt"),
    }}})
    last = det.history_[-1] if det.history_ else {}
    print(f"classes: {', '.join(det.classes_)}")
    print(f"{det.lineage_['n_images']} training key slices, "
          f"{det.lineage_['n_ignore_regions']} ignore regions (unannotated/noisy/unlabelled)")
    if last:
        print(f"epoch {last['epoch']}: loss {last['loss']:.4f}"
              + (f"; {ips:.2f} training images/s" if ips else ""))
    print(f"wrote {folder / 'model.pt'}")
    return 0

"""``deeplesion-lab finetune``: fine-tune a detector on corrected labels; before/after FROC."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ._detector_options import add_training_arguments

    p = sub.add_parser(
        "finetune",
        help="fine-tune a detector on the corrected labels and compare before/after",
        description=(
            "Start from a trained detector (default: the latest multi-class one) and train it "
            "on the current labels: a labels table (--labels), a label-store snapshot "
            "(--snapshot ID), or, by default, a new snapshot of RUN_DIR/labels.sqlite. The new "
            "checkpoint records the snapshot id; the FROC sensitivities before and after go to "
            "RUN_DIR/metrics.json (finetune.before / finetune.after) and are printed side by "
            "side."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels table (parquet/CSV: lesion_id, label)")
    p.add_argument("--snapshot", default=None, help="label-store snapshot id to train on")
    p.add_argument("--store", default=None,
                   help="label store: SQLite file or postgresql:// URL (default "
                        "RUN_DIR/labels.sqlite)")
    p.add_argument("--from", dest="base", default=None,
                   help="model to start from (default: the latest multi-class model)")
    p.add_argument("--name", default=None,
                   help="new model name (default: BASE-ft<snapshot id> or BASE-ft-<labels hash>)")
    p.add_argument("--class-map", action="append", default=[], metavar="LABEL=CLASS",
                   help="map a label onto a class of the model (repeatable, or comma-separated)")
    p.add_argument("--reset-head", action="store_true",
                   help="accept a different class set by re-initialising the classification "
                        "layer (the rest of the network is kept)")
    p.add_argument("--eval-split", choices=["test", "val", "val+test"], default="test",
                   help="split of the before/after evaluation (default test)")
    p.add_argument("--user", default="finetune", help="who takes the label-store snapshot")
    add_training_arguments(p, finetune=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..detection.dataset import mined_ignore_boxes
    from ..detection.froc import read_predictions
    from ..detection.labels_table import parse_class_map
    from ..detection.train import select_split
    from ..detection.workflow import resolve_finetune_labels, run_finetune, store_added_lesions
    from ..run import RunDir
    from ._detector_options import params_from_args

    run_dir = RunDir(args.run)
    run_dir.info()
    class_map = parse_class_map(args.class_map)
    params = params_from_args(args, new=False)
    labels, source = resolve_finetune_labels(run_dir, args.labels, args.snapshot, user=args.user,
                                             store=args.store)
    if source.get("label_snapshot_id") is not None:
        print(f"labels: snapshot {source['label_snapshot_id']} of {source['labels_source']} "
              f"({len(labels)} lesions)")
    else:
        print(f"labels: {source['labels_source']} ({len(labels)} lesions)")
    added = None
    if source.get("label_snapshot_id") is not None:  # labels from the store: its added lesions
        added = store_added_lesions(run_dir, args.store)
    ignore = None
    if args.ignore_from is not None:
        manifest = run_dir.load_manifest()
        ignore = mined_ignore_boxes(read_predictions(args.ignore_from),
                                    select_split(manifest, "train"), args.ignore_score)
    ft = run_finetune(run_dir, labels, source, base=args.base, name=args.name,
                      class_map=class_map, reset_head=args.reset_head, params=params,
                      eval_split=args.eval_split, ignore_boxes=ignore, overwrite=args.overwrite,
                      added=added)
    print(f"fine-tuned {ft['parent']} -> {ft['model']} "
          f"({ft['corrected'] if ft['corrected'] is not None else '?'} labels differ from the "
          f"pseudo-labels); metrics: {run_dir.metrics} (finetune)")
    return 0

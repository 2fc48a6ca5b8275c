"""``deeplesion-lab graph``: lesion graph, cross-study matching, tracks, missing-annotation mining.

Also ``deeplesion-lab accept-proposals``: accept mined proposals as new annotated lesions.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "graph",
        help="lesion graph, intra-patient matching and tracks, unannotated-lesion proposals",
        description=(
            "Build the lesion graph of a run (nodes: lesions and detected candidates; edges: "
            "nearest neighbours in embedding space, cross-study matches, candidate links), "
            "match each patient's lesions across studies (embedding, location and size; "
            "threshold learned on validation patients when a truth file is given), write lesion "
            "tracks, and, given detections on the annotated slices (or a detector in the run, "
            "which is then run on them and on their neighbouring slices), propose unannotated "
            "lesions. Outputs go to RUN_DIR/graph/ (nodes, edges, pairs, tracks, proposals "
            ".parquet, detections.csv when the detector ran, graph.json); metrics.json gains "
            "'matching' and 'missing_annotations'."
        ),
    )
    p.add_argument("--run", type=Path, required=True, help="run directory (with embeddings)")
    p.add_argument("--truth", type=Path, default=None,
                   help="truth file (default: the run's, if it has one); enables evaluation")
    p.add_argument("--predictions", type=Path, default=None,
                   help="detections CSV (file_name,x1,y1,x2,y2,score,label) from `deeplesion-lab "
                   "detect --split all`; default the run's detector/predictions_pseudo+single_all.csv (or _pseudo_all, "
                   "_single_all) if present")
    p.add_argument("--neighbors", type=int, default=10,
                   help="nearest-neighbour edges per node (default 10)")
    p.add_argument("--eval-split", type=int, default=3,
                   help="split whose key images evaluate the proposals (default 3, test)")
    p.add_argument("--neighbour-slices", type=int, default=1,
                   help="when the run has a detector, also run it on this many slices on each "
                   "side of the annotated key slices, to support proposals (default 1; 0: no)")
    p.add_argument("--detector-model", default=None,
                   help="detector under RUN_DIR/detector (default: the latest trained); "
                        "'a+b' averages CenterNets a and b (the pipeline: pseudo+single)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)

    a = sub.add_parser(
        "accept-proposals",
        help="accept mined lesion proposals as new annotated lesions",
        description=(
            "Add the given proposals (ids from RUN_DIR/graph/proposals.parquet) to the run's "
            "label store as new annotated lesions: one event with who accepted them and when, "
            "in the history and exports, and used by `finetune`. Retract one with "
            "`labels relabel --label 'not a lesion'`."
        ),
    )
    a.add_argument("--run", type=Path, required=True, help="run directory")
    a.add_argument("ids", nargs="+", help="proposal ids")
    a.add_argument("--user", default=None, help="who accepts (default: login name)")
    a.add_argument("--label", default=None, help="class of the new lesions (a taxonomy class)")
    a.add_argument("--db", default=None, help="label store URL (default RUN_DIR/labels.sqlite)")
    a.add_argument("--comment", default=None)
    a.set_defaults(func=run_accept)


def run(args: argparse.Namespace) -> int:
    from ..steps.graph import graph_step

    graph_step(args.run, truth=args.truth, predictions=args.predictions,
               n_neighbors=args.neighbors, eval_split=args.eval_split,
               neighbour_slices=args.neighbour_slices, detector_model=args.detector_model,
               seed=args.seed, progress=True)
    return 0


def run_accept(args: argparse.Namespace) -> int:
    from ..graph.missing import accept_proposals
    from ..labels import LabelStore
    from ..run import RunDir

    run_dir = RunDir(args.run)
    run_dir.info()
    with LabelStore.for_run(run_dir, db=args.db) as store:
        added = accept_proposals(run_dir, args.ids, args.user, label=args.label,
                                 comment=args.comment, store=store, tool="cli")
        skipped = len(set(args.ids)) - len(added)
        where = store.location
    if len(added):
        print(f"accepted {len(added)} proposals as new lesions (event "
              f"{int(added['event_id'].iloc[0])}) into {where}"
              + (f"; {skipped} already accepted" if skipped else ""))
    else:
        print(f"nothing new: all {skipped} already accepted")
    return 0

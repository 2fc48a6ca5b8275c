"""``deeplesion-lab demo-data``: write the synthetic DeepLesion-format demo dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write a synthetic DeepLesion-format dataset (no download needed)",
        description=(
            "Write a complete synthetic dataset in the DeepLesion format into DIR: "
            "DIR/DL_info.csv (the official 18 columns), "
            "DIR/Images_png/{patient}_{study}_{series}/{slice:03d}.png (16-bit, HU + 32768), "
            "DIR/truth.parquet (every lesion, annotated or not, with its true type and its "
            "identity across follow-up studies; for evaluation only) and DIR/README.md. "
            "Synthetic CT slices: body, organs and bones by level, CT-like noise, lesions of all "
            "8 coarse types where each occurs, several lesions per slice of which often only one "
            "is annotated, follow-up studies, a patient-level train/val/test split with training "
            "types written as -1. The same --seed gives the same files. "
            "With --like CSV, render synthetic slices for the rows of a real DL_info.csv instead "
            "(keeping their boxes, locations, sizes, spacing, windows, patients, studies and "
            "slice indices). DIR must be empty, new, or a previous demo-data output (replaced)."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder (empty, new, or a previous demo-data output)")
    p.add_argument("--patients", type=int, default=8, metavar="N",
                   help="number of patients (default 8; DeepLesion has 4,427)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed; the same seed gives the same dataset (default 0)")
    p.add_argument("--size", type=int, default=512, metavar="PX",
                   help="image side in pixels (default 512 as in DeepLesion; smaller sizes such "
                        "as 256 scale the geometry and render faster). Ignored with --like, "
                        "which uses each row's Image_size")
    p.add_argument("--like", type=Path, default=None, metavar="CSV",
                   help="a real DL_info.csv: render synthetic slices for its rows instead of "
                        "inventing patients (--patients is then ignored)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="with --like: render only the first N key images (default: all)")
    p.add_argument("--unannotated-share", type=float, default=None, metavar="F",
                   help="share (0-0.9) of the lesion instances in the truth file, on the key "
                        "slices and their neighbouring slices, that nobody annotated (default "
                        "0.5: Cai et al., 'Lesion Harvester', IEEE TMI 2021, estimate that 50%% "
                        "of DeepLesion's lesions are left unlabeled); with --like, unannotated "
                        "lesions are added around the real rows to reach it")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="worker processes (default 1; the output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import LabError

    if args.limit is not None and args.like is None:
        raise LabError("--limit only applies with --like CSV")
    from ..demo.cohort import UNANNOTATED_SHARE

    share = UNANNOTATED_SHARE if args.unannotated_share is None else args.unannotated_share
    if args.like is not None:
        from ..demo import render_like

        res = render_like(args.like, args.out, limit=args.limit, seed=args.seed,
                          progress=not args.quiet, n_jobs=args.jobs, unannotated_share=share)
    else:
        from ..demo import generate_demo

        res = generate_demo(args.out, n_patients=args.patients, seed=args.seed, size=args.size,
                            progress=not args.quiet, n_jobs=args.jobs, unannotated_share=share)
    print(res.summary())
    print(f"  {res.csv_path}")
    print(f"  {res.images_root}/")
    print(f"  {res.truth_path}  (evaluation only)")
    return 0

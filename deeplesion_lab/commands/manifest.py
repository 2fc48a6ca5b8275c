"""``deeplesion-lab manifest``: DL_info.csv -> manifest parquet (+ rejected rows CSV)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manifest",
        help="build a lesion manifest (parquet) from a DL_info.csv",
        description=(
            "Read a DL_info.csv (official 18 columns; extra columns kept), validate every row and "
            "write the valid lesions to OUT (parquet). Rejected rows, with line, column, value and "
            "reason, go to OUT's name with .rejected.csv."
        ),
    )
    p.add_argument("source", type=Path, help="DL_info.csv")
    p.add_argument("--out", type=Path, required=True, help="manifest to write (.parquet)")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the series folders (PPPPPP_SS_NN/SSS.png), or a folder holding "
             "Images_png or the Kaggle subset's images/ (default: Images_png beside the CSV, "
             "or the folder the CSV's kaggle_path column names)",
    )
    p.add_argument(
        "--require-images",
        action="store_true",
        help="later steps use only the lesions whose key slice is present (a partial download: "
             "the others stay in the manifest, has_image false, their series folders listed in "
             "OUT's name with .missing_images.csv); fails if none is present",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..manifest import write_manifest

    res = write_manifest(args.source, args.out, args.images, require_images=args.require_images)
    print(res.info.summary())
    les = res.lesions
    if les.attrs.get("images_root"):
        print(f"images: {les.attrs['images_root']} ({les.attrs['images_layout']}; "
              f"{int(les['has_image'].sum())} key slices on disk)")
        av = res.availability
        if av is not None and not av.complete:
            print(av.counts())
            if args.require_images:
                print("  later steps use the lesions with a key slice (--require-images); ", end="")
            else:
                print("  steps that read images stop unless given --present-only (or build the "
                      "manifest with --require-images); ", end="")
            print("every row stays in the manifest (has_image false where the key slice is "
                  "missing)")
            print(f"missing series folders -> {res.missing_path}")
    else:
        print("images: none (metadata-only manifest)")
    print(f"wrote {len(les)} lesions to {res.manifest_path}")
    if res.rejected_path is not None:
        print(
            f"rejected {res.info.n_rejected_rows} rows ({len(res.rejected)} problems) -> "
            f"{res.rejected_path}"
        )
        for r in res.rejected.head(5).itertuples():
            print(f"  line {r.line}, {r.column} = {r.value!r}: {r.reason}")
        if len(res.rejected) > 5:
            print(f"  ... {len(res.rejected) - 5} more in {res.rejected_path}")
    return 0

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
        help="Images_png folder (default: Images_png beside the CSV, if present)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..manifest import write_manifest

    res = write_manifest(args.source, args.out, args.images)
    print(res.info.summary())
    les = res.lesions
    if les.attrs.get("images_root"):
        print(f"images: {les.attrs['images_root']} ({int(les['has_image'].sum())} key slices on disk)")
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

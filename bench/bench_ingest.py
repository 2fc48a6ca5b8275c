"""Benchmark the data layer: ingest a DeepLesion-size DL_info.csv, read + window slices.

Usage: .venv/bin/python bench/bench_ingest.py [--rows 32735] [--real ../shared/deeplesion_real]

Writes bench/results/ingest.md. The 32,735-row CSV is made by repeating the real test split's
rows with shifted patient indices (so every row is a distinct, valid lesion).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deeplesion_lab import apply_window, load_hu, read_dl_info
from deeplesion_lab.manifest import write_manifest

HERE = Path(__file__).resolve().parent


def big_csv(real_csv: Path, rows: int, out: Path) -> Path:
    base = pd.read_csv(real_csv, dtype=str, keep_default_na=False)
    parts = []
    k = 0
    while sum(len(p) for p in parts) < rows:
        part = base.copy()
        pid = part["Patient_index"].astype(int) + 10000 * k
        part["Patient_index"] = pid.astype(str)
        part["File_name"] = [
            f"{p:06d}_{f[7:]}" for p, f in zip(pid, part["File_name"], strict=True)
        ]
        parts.append(part)
        k += 1
    pd.concat(parts, ignore_index=True).head(rows).to_csv(out, index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32735)
    ap.add_argument("--real", type=Path, default=HERE.parents[1] / "shared" / "deeplesion_real")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    lines = [f"# Data layer benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {platform.processor() or platform.machine()}, "
             f"command: `.venv/bin/python bench/bench_ingest.py --rows {args.rows}`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        csv = big_csv(args.real / "DL_info_test.csv", args.rows, Path(tmp) / "DL_info.csv")
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            info = read_dl_info(csv)
            times.append(time.perf_counter() - t)
        assert len(info.lesions) == args.rows and len(info.rejected) == 0
        best = min(times)
        t = time.perf_counter()
        write_manifest(csv, Path(tmp) / "m.parquet")
        man = time.perf_counter() - t
        lines += [
            f"- read + validate {args.rows:,} rows: best {best:.2f} s of {args.repeats} "
            f"({args.rows / best:,.0f} rows/s; median {np.median(times):.2f} s)",
            f"- full `manifest` (read, validate, id, parquet write): {man:.2f} s",
        ]
    root = args.real / "Images_png"
    files = sorted(root.rglob("*.png"))
    for f in files:  # warm the page cache
        f.read_bytes()
    per = []
    for _ in range(5):
        for f in files:
            t = time.perf_counter()
            hu = load_hu(f)
            apply_window(hu, "soft tissue")
            per.append(time.perf_counter() - t)
    per_ms = np.array(per) * 1000
    lines += [
        f"- read 16-bit PNG -> HU -> window (uint8), 512x512 real slices, {len(per)} reads: "
        f"median {np.median(per_ms):.1f} ms, p95 {np.percentile(per_ms, 95):.1f} ms "
        f"({1000 / np.median(per_ms):.0f} slices/s on one core)",
    ]
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "ingest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

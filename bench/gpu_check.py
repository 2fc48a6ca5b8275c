"""GPU check (issue 17): embedding and detector throughput on CUDA beside the CPU, in minutes.

Renders synthetic slices for the rows of a real ``DL_info.csv`` (``demo-data --like``, so at
DeepLesion's 512 px with its boxes, spacing and sizes), builds the manifest, then on each device
(the CPU, and CUDA when torch sees a GPU):

- **embedding training**: :class:`~deeplesion_lab.embedding.LesionEmbedder` epochs, patches per
  second (5 patches per triplet sequence; mixed precision on CUDA), after one warm-up epoch;
- **embedding extraction**: lesions per second;
- **detector training**: the CenterNet detector (the default) on whole 512 px slices (the CUDA
  default; the CPU default trains on 128 px windows, so the CPU row does both), images per
  second of the last epoch (the first is the warm-up);
- **detection**: ms per whole slice.

Usage (``bench/gpu_check.sh`` runs it under an 8-minute limit)::

    bench/gpu_check.sh                       # full setting; writes bench/results/gpu_check.md
    GPU_CHECK_SIZE=tiny bench/gpu_check.sh --out /tmp/x.md   # seconds on a CPU (the tests)

The CPU rows use fewer images than the GPU rows (throughput is a rate; the CPU would not fit
the time limit otherwise); each row says how many it used.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LIKE = REPO.parent / "shared" / "deeplesion_real" / "DL_info_test.csv"

#: Per size: key images rendered; per device: (embed epochs, detector images, detector epochs,
#: detector image size, detector batch).
SIZES = {
    "full": {"limit": 300, "jobs": max(1, min(8, (os.cpu_count() or 2) - 1)),
             "cpu": dict(embed_epochs=1, det_images=6, det_epochs=2, image_size=512, batch=2),
             "cuda": dict(embed_epochs=6, det_images=400, det_epochs=3, image_size=512,
                          batch=8)},
    "tiny": {"limit": 6, "jobs": 1,
             "cpu": dict(embed_epochs=2, det_images=6, det_epochs=2, image_size=128, batch=2),
             "cuda": dict(embed_epochs=2, det_images=6, det_epochs=2, image_size=128, batch=2)},
}


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"gpu_check: {' '.join(cmd[:3])} failed ({res.returncode}): "
                 f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}")


def make_data(work: Path, like: Path, limit: int, jobs: int) -> Path:
    """``demo-data --like`` and the manifest; returns the manifest path."""
    cli = [sys.executable, "-m", "deeplesion_lab"]
    _run([*cli, "demo-data", "--like", str(like), "--limit", str(limit), "--out",
          str(work / "data"), "--jobs", str(jobs), "--quiet"])
    _run([*cli, "manifest", str(work / "data" / "DL_info.csv"), "--out",
          str(work / "manifest.parquet")])
    return work / "manifest.parquet"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_device(device: str, manifest_path: Path, work: Path, cfg: dict, threads: int) -> dict:
    """Throughputs on ``device`` (one row of the table)."""
    from deeplesion_lab.detection.train import LesionDetector
    from deeplesion_lab.embedding import LesionEmbedder, PatchConfig, build_patches
    from deeplesion_lab.manifest import read_manifest

    df = read_manifest(manifest_path)
    out: dict = {"device": device}
    patches = build_patches(df, PatchConfig(), cache_dir=work / "patches")
    emb = LesionEmbedder(epochs=1, batch_size=32, device=device, num_threads=threads, seed=1)
    emb.fit(patches)  # warm-up epoch (cuDNN autotuning, allocator)
    _sync(device)
    emb.set_params(epochs=cfg["embed_epochs"], warm_start=True)
    t0 = time.perf_counter()
    emb.fit(patches)
    _sync(device)
    dt = time.perf_counter() - t0
    n_seq = len(patches) * cfg["embed_epochs"]
    out["embed_lesions"] = len(patches)
    out["embed_train_patches_per_s"] = 5 * n_seq / dt
    t0 = time.perf_counter()
    emb.transform(patches)
    _sync(device)
    out["embed_extract_per_s"] = len(patches) / (time.perf_counter() - t0)

    rows = df.drop_duplicates("file_name").head(cfg["det_images"])
    sub = df[df["file_name"].isin(rows["file_name"])]
    sub.attrs.update(df.attrs)
    det = LesionDetector(arch="centernet", width=32, image_size=cfg["image_size"],
                         epochs=cfg["det_epochs"], batch_size=cfg["batch"], train_crop=None,
                         device=device, num_threads=threads, progress=False, seed=1,
                         checkpoint_every=0)
    det.fit(sub, split="all")
    out["det_images"] = int(sub["file_name"].nunique())
    out["det_image_size"] = cfg["image_size"]
    out["det_train_images_per_s"] = float(det.history_[-1]["images_per_s"])
    det.predict(sub, "all")
    out["detect_ms_per_image"] = float(det.predict_ms_per_image_)
    if device == "cpu":  # the CPU training default: 128 px windows
        crop = min(128, cfg["image_size"])
        det2 = LesionDetector(**{**det.get_params(), "train_crop": crop})
        det2.fit(sub, split="all")
        out["det_train_crop_images_per_s"] = float(det2.history_[-1]["images_per_s"])
    return out


def gpu_name() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def _f(v, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def write_results(path: Path, rows: list[dict], args: argparse.Namespace, gpu: str | None,
                  command: str, size: str, seconds: float) -> None:
    import torch

    cpu_row = next((r for r in rows if r["device"] == "cpu"), None)
    lines = [
        "# GPU check (issue 17)",
        "",
        f"Date {time.strftime('%Y-%m-%d')}. Command: `{command}` (setting `{size}`, "
        f"{seconds:.0f} s in all). {platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}; data: `demo-data --like {args.like.name} --limit "
        f"{SIZES[size]['limit']}` (synthetic slices for real DeepLesion rows, 512 px).",
        "",
        "| Device | Embedding training (patches/s) | Embedding extraction (lesions/s) | "
        "Detector training, whole slices (images/s) | Detector training, 128 px windows "
        "(images/s) | Detection (ms/slice) | Images |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['device']}{' (' + gpu + ')' if r['device'] != 'cpu' and gpu else ''} | "
            f"{_f(r['embed_train_patches_per_s'])} | {_f(r['embed_extract_per_s'])} | "
            f"{_f(r['det_train_images_per_s'], '{:.2f}')} | "
            f"{_f(r.get('det_train_crop_images_per_s'), '{:.2f}')} | "
            f"{_f(r['detect_ms_per_image'])} | {r['embed_lesions']} lesions, "
            f"{r['det_images']} slices at {r['det_image_size']} px |")
    if gpu is None:
        lines.append("| cuda | not run: " + (args.no_gpu_reason or "no CUDA GPU visible to torch")
                     + " | | | | | |")
    if cpu_row is not None and gpu is not None:
        g = next(r for r in rows if r["device"] != "cpu")
        lines += ["", "GPU / CPU: embedding training "
                  f"{g['embed_train_patches_per_s'] / cpu_row['embed_train_patches_per_s']:.1f}x, "
                  "detector training (whole slices) "
                  f"{g['det_train_images_per_s'] / cpu_row['det_train_images_per_s']:.1f}x."]
    lines += ["", "Embedding: the small backbone on 64 px patches, batches of 32 sequences of 5; "
              "detector: CenterNet width 32, AdamW; mixed precision (bfloat16, or float16 with "
              "a gradient scaler) and DataLoader workers with pinned memory on CUDA only. "
              "Throughput after one warm-up epoch. CPU rows with the CPU threads torch uses "
              f"({args.threads or 'default'})."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default=os.environ.get("GPU_CHECK_SIZE",
                                                                             "full"))
    ap.add_argument("--like", type=Path, default=Path(os.environ.get("GPU_CHECK_LIKE", LIKE)),
                    help="a real DL_info.csv (default ../shared/deeplesion_real/DL_info_test.csv)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.md")
    ap.add_argument("--devices", default="cpu,auto",
                    help="cpu and/or cuda/auto (auto: the GPU when torch sees one)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-gpu-reason", default=os.environ.get("GPU_CHECK_NO_GPU_REASON"),
                    help="the table's words when there is no GPU")
    args = ap.parse_args()
    if not args.like.is_file():
        sys.exit(f"gpu_check: {args.like}: no DL_info.csv to render like (set GPU_CHECK_LIKE "
                 "or --like to a real DeepLesion DL_info.csv)")
    t_all = time.perf_counter()
    gpu = gpu_name()
    devices = []
    for d in args.devices.split(","):
        d = d.strip()
        if d == "auto":
            d = "cuda" if gpu else ""
        if d and d not in devices:
            devices.append(d)
    size = SIZES[args.size]
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        t0 = time.perf_counter()
        manifest = make_data(work, args.like, size["limit"], size["jobs"])
        print(f"data: {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for d in devices:
            t0 = time.perf_counter()
            kind = "cuda" if d.startswith("cuda") else "cpu"
            rows.append(bench_device(d, manifest, work, size[kind], args.threads))
            rows[-1]["seconds"] = time.perf_counter() - t0
            print(f"{d}: {rows[-1]}", flush=True)
        command = "bench/gpu_check.sh" + ("" if args.size == "full" else f" --size {args.size}")
        write_results(args.out, rows, args, gpu, command, args.size,
                      time.perf_counter() - t_all)
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

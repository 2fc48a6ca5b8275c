"""The embedding's training at DeepLesion's size (issue 17): one epoch at 32,735 lesions, measured.

The slices of a 32,735-lesion DeepLesion take half an hour to render on this machine; training
does not read them (it works on the cached patches), and its work does not depend on the pixel
values. So the patches here are synthetic (a blob of the lesion's size on noise, uint8, the
shape ``embed`` caches: 3 x 64 x 64), and everything else is real: the lesions are the real test
split's rows (``DL_info_test.csv``: locations, sizes, types, patients) repeated with new patient
ids up to N rows (copy k: patient + 5000 k, locations moved by 1e-4 so that no two are equal),
the sampler knows the types of the seed and validation roles as ``embed`` does, and the
embedder is ``embed``'s with its defaults (:class:`~deeplesion_lab.embedding.LesionEmbedder`,
batch 32, one torch thread).

Measured per size, in this process: the sampler's fit and one epoch's sequences (the parts that
could grow faster than N), one training epoch (CPU and wall seconds, steps), extraction of every
embedding, peak RSS. Progress goes to ``--log`` every 100 steps, so a cut run still tells the
step rate at that size.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_embed_train_scale.py \\
        --sizes 4927 32735 [--epochs 1] [--context-mm 80] [--log /tmp/h17_train.log]

Appends one JSON line per size to ``bench/results/embed_train_scale.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
RESULTS = HERE / "results" / "embed_train_scale.jsonl"
REAL = REPO.parent / "shared" / "deeplesion_real" / "DL_info_test.csv"
PATIENT_OFFSET = 5000


def lesions(n: int, csv: Path = REAL):
    """The real split's lesions repeated with new patient ids up to ``n`` rows (a manifest)."""
    import pandas as pd

    from deeplesion_lab.manifest import read_manifest, write_manifest

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"h17_train_manifest_{os.getpid()}.parquet"
    m = read_manifest(write_manifest(csv, tmp).manifest_path)
    tmp.unlink(missing_ok=True)
    copies = -(-n // len(m))
    parts = []
    for k in range(copies):
        p = m.copy()
        p["patient_index"] = p["patient_index"].astype(np.int64) + k * PATIENT_OFFSET
        p["lesion_id"] = [f"{k}-{x}" for x in m["lesion_id"].astype(str)]
        for c in ("location_x", "location_y", "location_z"):
            p[c] = p[c].astype(float) + 1e-4 * k
        parts.append(p)
    return pd.concat(parts, ignore_index=True).iloc[:n]


def synthetic_patches(manifest, size: int = 64, seed: int = 0, context_mm: float = 80.0,
                      context_size: int = 32):
    """A :class:`PatchSet` of the lesions with synthetic pixels (a blob on noise).

    With ``context_mm`` (``embed``'s default 80) each lesion also gets a synthetic context crop
    of ``context_size`` pixels in 3 windows, so the network is ``embed``'s two-branch one.
    """
    from deeplesion_lab.embedding import PatchConfig
    from deeplesion_lab.embedding.dataset import PatchSet, lesion_meta

    n = len(manifest)
    rng = np.random.default_rng(seed)
    meta = lesion_meta(manifest)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - size / 2
    r2 = (xx**2 + yy**2)[None]
    patches = np.empty((n, 3, size, size), dtype=np.uint8)
    radius = np.clip(meta["sizes_mm"] / 2, 3, size / 2 - 2).astype(np.float32)
    level = rng.uniform(60, 200, n).astype(np.float32)
    for s in range(0, n, 1024):
        e = min(n, s + 1024)
        blob = level[s:e, None, None] * np.exp(-r2 / (2 * radius[s:e, None, None] ** 2))
        noise = rng.normal(40, 12, (e - s, 3, size, size)).astype(np.float32)
        patches[s:e] = np.clip(noise + blob[:, None], 0, 255).astype(np.uint8)
    half = radius[:, None]
    boxes = np.concatenate([size / 2 - half, size / 2 - half, size / 2 + half, size / 2 + half],
                           axis=1).astype(np.float32)
    context = None
    if context_mm:
        context = rng.normal(90, 30, (n, 3, context_size, context_size)).clip(0, 255)
        context = context.astype(np.uint8)
    config = PatchConfig(channels="context", context_mm=float(context_mm),
                         context_size=context_size)
    return PatchSet(patches=patches, boxes=boxes, config=config,
                    missing_context=np.zeros(n, np.int16), context=context, **meta)


def measure(n: int, epochs: int, log: Path | None, context_mm: float = 80.0) -> dict:
    import torch

    from deeplesion_lab.embedding import LesionEmbedder
    from deeplesion_lab.embedding.sampling import SequentialSampler
    from deeplesion_lab.evaluation import protocol_split
    from deeplesion_lab.steps.embed import SAMPLER_ROLES

    torch.set_num_threads(1)
    out: dict = {"n": n, "epochs": epochs, "context_mm": context_mm, "date": time.strftime("%Y-%m-%d %H:%M"),
                 "load_before": round(os.getloadavg()[0], 2)}
    c0, w0 = time.process_time(), time.perf_counter()
    m = lesions(n)
    P = synthetic_patches(m, context_mm=context_mm)
    roles = protocol_split(m["patient_index"].to_numpy())
    types = np.where(np.isin(roles, list(SAMPLER_ROLES["seed+val"])), P.types, -1)
    out["data_cpu_s"] = round(time.process_time() - c0, 1)
    out["patients"] = int(m["patient_index"].nunique())
    out["sampler_types"] = int((types >= 1).sum())
    emb = LesionEmbedder(epochs=epochs, num_threads=1, progress=False, seed=0)
    c0, w0 = time.process_time(), time.perf_counter()
    sampler = SequentialSampler(emb.n_neighbors, seed=0).fit(P.locations, P.sizes_mm, types)
    c1 = time.process_time()
    seqs = sampler.sample(epoch=0)
    c2 = time.process_time()
    out.update(sampler_fit_cpu_s=round(c1 - c0, 2), sampler_sample_cpu_s=round(c2 - c1, 2),
               sequences=int(len(seqs)), steps_per_epoch=int(-(-len(seqs) // emb.batch_size)))
    steps = {"n": 0}
    orig = emb._step_loss
    fh = open(log, "a") if log is not None else None
    t_cpu0, t_wall0 = time.process_time(), time.perf_counter()

    def timed(*a, **k):
        steps["n"] += 1
        if fh is not None and steps["n"] % 100 == 0:
            fh.write(json.dumps({"n": n, "step": steps["n"], "of": out["steps_per_epoch"] * epochs,
                                 "cpu_s": round(time.process_time() - t_cpu0, 1),
                                 "wall_s": round(time.perf_counter() - t_wall0, 1),
                                 "load": round(os.getloadavg()[0], 2)}) + "\n")
            fh.flush()
        return orig(*a, **k)

    emb._step_loss = timed
    c0, w0 = time.process_time(), time.perf_counter()
    emb.fit(P, y=types)
    c1, w1 = time.process_time(), time.perf_counter()
    out.update(train_cpu_s=round(c1 - c0, 1), train_wall_s=round(w1 - w0, 1), steps=steps["n"],
               triplet_loss=[round(h["triplet_loss"], 4) for h in emb.history_])
    emb.transform(P)
    c2, w2 = time.process_time(), time.perf_counter()
    out.update(extract_cpu_s=round(c2 - c1, 1), extract_wall_s=round(w2 - w1, 1),
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               patches_mb=round(P.patches.nbytes / 2**20), load_after=round(os.getloadavg()[0], 2))
    out["cpu_s_per_1000_per_epoch"] = round(out["train_cpu_s"] / epochs / (n / 1000), 1)
    if fh is not None:
        fh.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4927, 32735])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--context-mm", type=float, default=80.0,
                    help="context crop of embed's default network (0: the one-branch network)")
    args = ap.parse_args()
    for n in args.sizes:
        r = measure(n, args.epochs, args.log, args.context_mm)
        print(json.dumps(r), flush=True)
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

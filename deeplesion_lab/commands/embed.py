"""``deeplesion-lab embed``: train the lesion embedder on a manifest and extract embeddings."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="train the lesion embedding network and write embeddings.parquet",
        description=(
            "Create the run directory (run.json), cut lesion patches (cached under RUN/cache), "
            "train the embedding network with the CVPR 2018 sequential triplet sampling (type "
            "where known: the evaluation protocol's seed and val lesions, never its test lesions; "
            "then location, then size), save "
            "embedder.pt + embedder.json and write embeddings.parquet. An interrupted run "
            "resumes: finished patch chunks, a trained checkpoint with the same settings and "
            "finished extraction chunks are reused."
        ),
    )
    p.add_argument("manifest", type=Path, help="manifest parquet (with images)")
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--truth", type=Path, default=None,
                   help="truth file recorded in run.json for evaluation (never used to train)")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="local checkpoint to initialise the network from (never downloaded)")
    p.add_argument("--arch", choices=("small", "resnet18"), default="small")
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--channels", choices=("context", "windows"), default="windows",
                   help="patch channels: 3 context slices in one wide window, or the key slice "
                        "in lung/soft-tissue/bone windows (default)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences (5 patches) per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--type-weight", type=float, default=None,
                   help="weight of the cross-entropy on the sampler's known types (default: "
                        "the LesionEmbedder default; 0 for triplets only)")
    p.add_argument("--uniformity-weight", type=float, default=None,
                   help="weight of the uniformity loss against collapse (default: the "
                        "LesionEmbedder default; 0 disables it)")
    p.add_argument("--sampler-types", choices=("seed+val", "seed", "none"), default="seed+val",
                   help="whose coarse types the sampler may use: the evaluation protocol's seed "
                        "and val lesions (default), seeds only, or none (location and size "
                        "only); test lesions' types are never used")
    p.add_argument("--use-pseudo-labels", action="store_true",
                   help="also sample by the run's pseudo-labels (from an earlier `mine`)")
    p.add_argument("--labels-from-store", action="store_true",
                   help="also sample by the label store's corrected labels (people's corrections "
                        "and added lesions; RUN/labels.sqlite or --db), for lesions outside the "
                        "protocol's test role, so that the evaluation stays honest; they take "
                        "precedence over the manifest's and the pseudo-labels' types")
    p.add_argument("--db", default=None,
                   help="label store for --labels-from-store (default RUN/labels.sqlite)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even if a checkpoint with the same settings exists")
    p.add_argument("--present-only", action="store_true",
                   help="a partial download: embed the lesions whose key slice is present (the "
                        "others stay in the manifest, out of training and evaluation; the run "
                        "records it for the later steps)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading slices")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    # Passive OpenMP waiting: on a busy machine spinning threads slow torch down several-fold.
    # Only effective when torch is not imported yet (it reads the variable when it loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import hashlib
    import json
    import shutil
    import time

    import numpy as np

    from ..availability import record_run_images, select_present
    from ..embedding import LesionEmbedder, PatchConfig, build_patches, context_summary
    from ..errors import LabError
    from ..evaluation import protocol_split
    from ..lesion_types import TYPE_CODES
    from ..manifest import read_manifest
    from ..run import RunDir

    t0 = time.time()
    progress = not args.no_progress
    df, availability = select_present(read_manifest(args.manifest), args.present_only,
                                      step="embed")
    if not availability.complete:
        print(f"embed {availability.summary()}")
    if len(df) < 3:
        raise LabError(
            f"{args.manifest}: {len(df)} lesion(s); training an embedding needs at least 3"
        )
    if args.epochs < 0:
        raise LabError(f"--epochs must be >= 0, got {args.epochs}")
    if args.truth is not None and not args.truth.is_file():
        raise LabError(f"{args.truth}: truth file not found")
    config = PatchConfig(channels=args.channels)
    run_dir = RunDir(args.run)
    if (run_dir.run_json.is_file()
            and Path(run_dir.info()["manifest"]) != Path(args.manifest).resolve()):
        run_dir.init(args.manifest)  # raises the clear "other manifest" error
    patches = build_patches(
        df, config, cache_dir=run_dir.path / "cache" / "patches", num_workers=args.workers,
        progress=progress,
    )
    if (line := context_summary(patches)) is not None:
        print(line)
    run_dir.init(args.manifest, args.truth)
    record_run_images(run_dir.run_json, availability)

    roles = protocol_split(df["patient_index"].to_numpy())
    allowed = {"seed+val": ["seed", "val"], "seed": ["seed"], "none": []}[args.sampler_types]
    types = np.where(np.isin(roles, allowed), patches.types, -1)
    n_pseudo = 0
    if args.use_pseudo_labels:
        pl = run_dir.load_pseudo_labels()
        m = dict(zip(pl["lesion_id"].astype(str), pl["label"].astype(str), strict=True))
        fill = np.array([TYPE_CODES.get(m.get(i, ""), -1) for i in patches.lesion_ids])
        use = (types < 1) & (fill >= 1)
        types[use] = fill[use]
        n_pseudo = int(use.sum())
    n_store = 0
    if args.labels_from_store:
        n_store = _apply_store_labels(types, patches.lesion_ids, roles, args.db or run_dir.label_db)

    emb = LesionEmbedder(
        embed_dim=args.embed_dim, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, num_threads=args.threads, progress=progress,
        pretrained=str(args.pretrained) if args.pretrained else None,
    )
    for name in ("type_weight", "uniformity_weight"):
        if getattr(args, name) is not None:
            emb.set_params(**{name: getattr(args, name)})
    ckpt = run_dir.path / "embedder.pt"
    record = ckpt.with_suffix(".json")
    params = {k: v for k, v in emb.get_params().items() if k not in ("progress", "num_threads")}
    settings = {
        "params": params,
        "patch_config": dict(config.__dict__),
        "types_hash": hashlib.sha1(types.astype(np.int64).tobytes()).hexdigest()[:12],
        "manifest_data_hash": df.attrs.get("data_hash", ""),
        "sampler_type_roles": args.sampler_types,
        "sampler_types": int((types >= 1).sum()),
        "pseudo_labels_used": n_pseudo,
        "store_labels_used": n_store,
    }
    reused = False
    if ckpt.is_file() and record.is_file() and not args.retrain:
        if json.loads(record.read_text()).get("training") == settings:
            emb = LesionEmbedder.load(ckpt)
            emb.progress, emb.num_threads = progress, args.threads
            reused = True
            print(f"reusing the trained embedder {ckpt} (same settings; --retrain to train again)")
    if not reused:
        emb.fit(patches, y=types)
        emb.save(ckpt, extra={"training": settings,
                              "manifest": str(Path(args.manifest).resolve())})
    resume = run_dir.path / "cache" / "embeddings"
    vectors = emb.transform(patches, resume_dir=resume)
    run_dir.save_embeddings(
        patches.lesion_ids, vectors,
        metadata={"deeplesion_lab.model_hash": emb.model_hash(),
                  "deeplesion_lab.data_hash": df.attrs.get("data_hash", "")},
    )
    shutil.rmtree(resume, ignore_errors=True)
    last = emb.history_[-1].get("triplet_loss") if emb.history_ else None
    run_dir.update_metrics({"embedding": {
        "n_lesions": len(patches), "manifest_lesions": availability.n_lesions,
        "epochs": args.epochs, "final_triplet_loss": last,
        "sampler_types_used": settings["sampler_types"], "pseudo_labels_used": n_pseudo,
        "store_labels_used": n_store,
        "model_hash": emb.model_hash(), "seconds": round(time.time() - t0, 1),
    }})
    print(f"embedded {len(patches)} lesions ({vectors.shape[1]}-d) in {time.time() - t0:.1f} s; "
          f"sampler knew the type of {settings['sampler_types']} lesions (protocol roles "
          f"{args.sampler_types}{' + pseudo-labels' if n_pseudo else ''}"
          f"{f' + {n_store} corrected labels' if n_store else ''}; never test types)")
    print(f"wrote {ckpt}, {record.name} and {run_dir.embeddings}")
    return 0


def _apply_store_labels(types, lesion_ids, roles, db) -> int:
    """Overwrite ``types`` (in place) with the label store's corrected labels of non-test
    lesions; returns how many lesions took one."""
    import numpy as np

    from ..errors import LabError
    from ..labels import LabelStore
    from ..lesion_types import TYPE_CODES

    if not str(db).startswith("postgresql") and not Path(db).is_file():
        raise LabError(f"{db}: no label store for --labels-from-store (run `labels init` first)")
    with LabelStore.open(db, create=False) as store:
        cur = store.current_labels()
    cur = cur[cur["source"].isin(["corrected", "added"]) & cur["label"].notna()]
    # classes people added beyond the 8 coarse types get their own codes (9, 10, ...)
    extra = sorted(set(cur["label"].astype(str)) - set(TYPE_CODES))
    codes = {**TYPE_CODES, **{name: 9 + k for k, name in enumerate(extra)}}
    m = dict(zip(cur["lesion_id"].astype(str), cur["label"].astype(str), strict=True))
    code = np.array([codes.get(m.get(str(i), ""), -1) for i in lesion_ids])
    use = (code >= 1) & (np.asarray(roles) != "test")
    types[use] = code[use]
    return int(use.sum())

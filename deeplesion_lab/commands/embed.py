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
    p.add_argument("--context-mm", type=float, default=80.0,
                   help="side in mm of a second crop of the key slice at a fixed physical size "
                        "around the lesion (the tissue it sits in), seen by a small second "
                        "branch of the network (default 80; 0: no context crop, the network "
                        "before issue 15's context branch)")
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
                   help="also sample by the run's pseudo-labels (from an earlier `mine`), for "
                        "lesions outside the protocol's test role")
    p.add_argument("--labels-from-store", action="store_true",
                   help="also sample by the label store's corrected labels (people's corrections "
                        "and added lesions; RUN/labels.sqlite or --db), for lesions outside the "
                        "protocol's test role, so that the evaluation stays honest; they take "
                        "precedence over the manifest's and the pseudo-labels' types")
    p.add_argument("--db", default=None,
                   help="label store for --labels-from-store (default RUN/labels.sqlite)")
    p.add_argument("--hold-out", default=None, metavar="SPLIT",
                   help="a split (test, val, val+test) whose lesions never lend the sampler a "
                        "type (manifest type, pseudo-label or label-store label), so that "
                        "figures on it later (the detectors' class-aware FROC, the typing of "
                        "detections) are not scored on types the embedding was trained on "
                        "(default: the protocol roles alone decide; the pipeline holds out test)")
    p.add_argument("--retrain", action="store_true",
                   help="train again even if a checkpoint with the same settings exists")
    p.add_argument("--present-only", action="store_true",
                   help="a partial download: embed the lesions whose key slice is present (the "
                        "others stay in the manifest, out of training and evaluation; the run "
                        "records it for the later steps)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading slices")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N or auto (the GPU when torch sees one, "
                        "else the CPU); mixed precision on CUDA")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="parts of each batch with summed gradients (under torchrun at least "
                        "one per process; N processes train as one with --micro-batches N)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..steps.embed import EmbedSettings, embed_run

    settings = EmbedSettings(
        epochs=args.epochs, arch=args.arch, embed_dim=args.embed_dim, channels=args.channels,
        context_mm=args.context_mm, batch_size=args.batch_size, lr=args.lr, seed=args.seed, type_weight=args.type_weight,
        uniformity_weight=args.uniformity_weight, sampler_types=args.sampler_types,
        use_pseudo_labels=args.use_pseudo_labels, labels_from_store=args.labels_from_store,
        db=args.db, retrain=args.retrain, present_only=args.present_only,
        pretrained=str(args.pretrained) if args.pretrained else None, workers=args.workers,
        threads=args.threads, progress=not args.no_progress, device=args.device,
        micro_batches=args.micro_batches, hold_out=args.hold_out,
    )
    embed_run(args.run, args.manifest, settings, truth=args.truth)
    return 0

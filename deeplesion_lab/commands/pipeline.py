"""``deeplesion-lab pipeline``: run every step of the lab once, skipping what is already done."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run the whole pipeline (manifest -> embed -> mine -> evaluate -> labels -> "
        "detector -> fine-tune -> graph -> report), skipping finished steps",
        description=(
            "Run every step as its subcommand would (the same library functions; the long "
            "ones as jobs of the run), skipping each step that is done (use --force STEP to "
            "redo one). With --truth (demo data), a simulated "
            "annotator corrects a share of wrong pseudo-labels through the label store before "
            "fine-tuning, so the report shows before/after numbers."
        ),
    )
    p.add_argument("--manifest", type=Path, required=True, help="manifest parquet")
    p.add_argument("--run", type=Path, required=True, help="run directory")
    p.add_argument("--csv", type=Path, default=None,
                   help="DL_info.csv to build the manifest from when it does not exist")
    p.add_argument("--truth", type=Path, default=None, help="truth file (demo data only)")
    p.add_argument("--embed-epochs", type=int, default=10)
    p.add_argument("--clusters", type=int, default=None, help="K for mining (default: chosen)")
    p.add_argument("--hold-out", "--mine-hold-out", dest="hold_out", default="test",
                   metavar="SPLIT",
                   help="split whose manifest types neither the embedding's sampler nor the "
                        "mining uses (`embed --hold-out`, `mine --hold-out`; default test: the "
                        "split the detectors and the fine-tuning on corrected labels are scored "
                        "on, so that their class-aware figures are not scored on types that "
                        "shaped the embedding or made the pseudo-labels); none: every type is "
                        "used (--mine-hold-out is the same option's earlier name)")
    p.add_argument("--detector-epochs", type=int, default=128,
                   help="epochs of each detector (default 128: about 4 CPU-minutes of the "
                        "default centernet at 24 patients; on a CPU each epoch sees one "
                        "128-px window per training slice)")
    p.add_argument("--detector-processes", type=int, choices=[1, 2], default=2,
                   help="train the two detectors side by side, one core each (2, default, "
                        "when the machine has 2 cores), or one after the other (1)")
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--correction-share", type=float, default=0.5,
                   help="share of wrong pseudo-labels the simulated annotator fixes")
    p.add_argument("--no-detector", action="store_true", help="skip detector steps")
    p.add_argument("--no-graph", action="store_true", help="skip the lesion graph")
    p.add_argument("--force", action="append", default=[], metavar="STEP",
                   help="redo this step even if its output exists (repeatable)")
    p.add_argument("--background", action="store_true",
                   help="run the quick steps (manifest, embed, mine, evaluate, label store) now, "
                        "then the long ones (detectors, fine-tuning, graph, report) as a "
                        "background job of the run; follow it with `deeplesion-lab jobs --run RUN`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(
        manifest=args.manifest, run_dir=args.run, truth=args.truth, source_csv=args.csv,
        embed_epochs=args.embed_epochs, clusters=args.clusters,
        hold_out=None if args.hold_out.lower() == "none" else args.hold_out,
        detector_epochs=args.detector_epochs, finetune_epochs=args.finetune_epochs,
        detector_processes=args.detector_processes,
        correction_share=args.correction_share, detector=not args.no_detector,
        graph=not args.no_graph,
    )
    if args.background:
        return _run_in_background(args, cfg)
    steps = run_pipeline(cfg, force=args.force)
    total = sum(s for _, _, s in steps)
    print(f"pipeline finished: {sum(1 for _, st, _ in steps if st == 'ran')} steps ran "
          f"in {total:.0f} s; run directory {args.run}")
    return 0


def _run_in_background(args: argparse.Namespace, cfg) -> int:
    import dataclasses

    from ..jobs import JobBusy, start_job
    from ..pipeline import run_pipeline

    run_pipeline(dataclasses.replace(cfg, detector=False, graph=False), force=args.force)
    argv = ["pipeline", "--manifest", cfg.manifest, "--run", cfg.run_dir,
            "--embed-epochs", cfg.embed_epochs, "--detector-epochs", cfg.detector_epochs,
            "--detector-processes", cfg.detector_processes, "--finetune-epochs",
            cfg.finetune_epochs, "--correction-share", cfg.correction_share]
    argv += ["--truth", cfg.truth] if cfg.truth else []
    argv += ["--csv", cfg.source_csv] if cfg.source_csv else []
    argv += ["--clusters", cfg.clusters] if cfg.clusters else []
    argv += ["--hold-out", cfg.hold_out or "none"]
    argv += ["--no-detector"] if not cfg.detector else []
    argv += ["--no-graph"] if not cfg.graph else []
    try:
        rec = start_job(cfg.run_dir, "pipeline", argv)
    except JobBusy:
        print(f"[pipeline] the long steps are already running in the background; follow them "
              f"with `deeplesion-lab jobs --run {cfg.run_dir}`", flush=True)
        return 0
    print(f"[pipeline] the long steps run in the background (job 'pipeline', pid {rec.pid}, "
          f"log {rec.log}); follow them with `deeplesion-lab jobs --run {cfg.run_dir}`",
          flush=True)
    return 0

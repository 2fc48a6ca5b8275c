"""The whole lab pipeline, step by step, each step skipped when its output already exists.

``deeplesion-lab pipeline`` (and ``make lab`` / ``make demo``) run, in order: manifest, embed,
mine, evaluate, label store, detectors (single class and pseudo-label classes, side by side on
two cores), detection
evaluation, simulated corrections + fine-tuning (only with a truth file: a stand-in for people),
lesion graph, report. Each step calls the same subcommand a user would type, so the pipeline is
exactly the sum of the documented commands.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import LabError
from .run import RunDir

__all__ = ["PipelineConfig", "Step", "pipeline_steps", "run_pipeline", "simulate_corrections"]


@dataclass
class PipelineConfig:
    """Settings of one pipeline run (CPU-sized defaults for the demo data)."""

    manifest: Path
    run_dir: Path
    truth: Path | None = None
    source_csv: Path | None = None
    embed_epochs: int = 10
    clusters: int | None = None
    detector_epochs: int = 128
    finetune_epochs: int = 30
    detector_processes: int = 2
    correction_share: float = 0.5
    annotator: str = "demo-annotator"
    detector: bool = True
    graph: bool = True
    seed: int = 0


@dataclass
class Step:
    """One pipeline step: its name, a check that it is done, and what runs it."""

    name: str
    done: Callable[[], bool]
    run: Callable[[], None]


def _cli(argv: Sequence[str]) -> None:
    from .cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        raise LabError(f"step `deeplesion-lab {' '.join(str(a) for a in argv)}` failed ({code})")


def _jobs(run: RunDir, jobs: dict[str, Sequence[str]], report_s: float = 20.0) -> None:
    """Run ``deeplesion-lab`` commands as jobs of the run (:mod:`deeplesion_lab.jobs`), side by
    side when there are several, printing one progress line per job every ``report_s``.

    Each job has its record, lock and log in ``RUN/jobs/`` (``deeplesion-lab jobs --run RUN``).

    Raises
    ------
    LabError
        A job failed (its name, exit status, log and the log's last lines) or already runs.
    """
    import threading

    from .jobs import format_duration, job_log, read_job, run_job

    results: dict[str, object] = {}

    def work(name: str, argv: Sequence[str]) -> None:
        try:
            results[name] = run_job(run, name, argv)
        except LabError as exc:
            results[name] = exc

    threads = []
    for name, argv in jobs.items():
        print(f"[pipeline]   {name}: `deeplesion-lab {' '.join(str(a) for a in argv)}` "
              f"(job log: {job_log(run, name)})", flush=True)
        t = threading.Thread(target=work, args=(name, argv), daemon=True)
        t.start()
        threads.append(t)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(report_s / max(1, len(threads)))
        for name in jobs:
            rec = read_job(run, name)
            if rec is not None and rec.state == "running" and rec.progress is not None:
                eta = f", ETA {format_duration(rec.eta_s)}" if rec.eta_s else ""
                print(f"[pipeline]   {name}: {100 * rec.progress:.0f} %{eta}", flush=True)
    failed = []
    for name, res in results.items():
        if isinstance(res, LabError):
            failed.append(str(res))
        elif res.state != "done":
            log = Path(res.log)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
            failed.append(f"`{name}` failed ({res.exit_code}); log {log}:\n{tail}")
    if failed:
        raise LabError("\n".join(failed))


def _train_detectors(cfg: PipelineConfig, run: RunDir) -> None:
    """The single-class and pseudo-label detectors: side by side on two cores when possible.

    Two processes with one torch thread each train about twice as many windows per second as
    one process with two threads (a CPU training step of this small network is mostly work
    that one thread does alone), so the pipeline gives each detector twice the epochs in the
    same time. An interrupted training resumes from its ``last.pt``.
    """
    todo = [n for n in ("single", "pseudo")
            if not (run.detector_dir / n / "model.pt").is_file()]
    argv = {n: ["train-detector", "--run", cfg.run_dir, "--classes", n,
                "--epochs", cfg.detector_epochs] for n in todo}
    if len(todo) > 1 and cfg.detector_processes > 1 and (os.cpu_count() or 1) > 1:
        _jobs(run, {f"train-detector-{n}": [*argv[n], "--threads", 1] for n in todo})
        for n in todo:
            print(f"[pipeline]   {n}: {run.detector_dir / n / 'model.pt'}")
    else:
        for n in todo:
            _jobs(run, {f"train-detector-{n}": argv[n]})
    from .detection.workflow import set_latest

    set_latest(run, "pseudo")


def _metrics(run: RunDir) -> dict:
    return json.loads(run.metrics.read_text()) if run.metrics.is_file() else {}


def _new_classes(run: RunDir) -> bool:
    """Whether the corrected labels hold classes the pseudo-label detector was not trained on."""
    from .labels import LabelStore

    mined = set(run.load_pseudo_labels()["label"].astype(str))
    current = set(LabelStore.open(run.label_db).current_labels()["label"].astype(str))
    return bool(current - mined)


def simulate_corrections(run_dir: str | Path, truth: str | Path, share: float = 0.5,
                         user: str = "demo-annotator", seed: int = 0) -> int:
    """Stand in for annotators: fix ``share`` of the wrong pseudo-labels using the truth file.

    Corrections go through the label store as ordinary relabel events by ``user`` (one batch per
    true type), so they appear in history and can be undone like any person's work. Returns the
    number of lesions corrected.
    """
    from .labels import LabelStore
    from .lesion_types import COARSE_TYPES

    run = RunDir(run_dir)
    t = pd.read_parquet(truth)
    t = t[t["annotated"] & t["lesion_id"].notna()][["lesion_id", "coarse_type"]]
    store = LabelStore.open(run.label_db)
    cur = store.current_labels()[["lesion_id", "label"]]
    df = cur.merge(t, on="lesion_id")
    df["true_label"] = df["coarse_type"].map(COARSE_TYPES)
    wrong = df[df["label"] != df["true_label"]]
    rng = np.random.default_rng(seed)
    pick = wrong.sample(n=int(round(len(wrong) * share)), random_state=int(rng.integers(1 << 31)))
    for label, g in pick.groupby("true_label"):
        store.relabel(g["lesion_id"].tolist(), label, user, tool="pipeline-simulated",
                      comment="simulated annotator (truth file)")
    return len(pick)


def pipeline_steps(cfg: PipelineConfig) -> list[Step]:
    """The steps for ``cfg``, in order."""
    run = RunDir(cfg.run_dir)
    m, r = cfg.manifest, cfg.run_dir
    truth = ["--truth", cfg.truth] if cfg.truth else []
    det = run.detector_dir
    pred_all = run.predictions_file("pseudo", "all")

    def manifest_step() -> None:
        if cfg.source_csv is None:
            raise LabError(f"{m}: manifest not found and no source CSV given")
        _cli(["manifest", cfg.source_csv, "--out", m])

    steps = [
        Step("manifest", m.is_file, manifest_step),
        Step("embed", run.embeddings.is_file,
             lambda: _cli(["embed", m, "--run", r, "--epochs", cfg.embed_epochs, *truth])),
        Step("mine", lambda: run.pseudo_labels.is_file() and run.umap.is_file(),
             lambda: _cli(["mine", "--run", r,
                           *(["--clusters", cfg.clusters] if cfg.clusters else [])])),
        Step("evaluate", lambda: "classification" in _metrics(run),
             lambda: _cli(["evaluate", "--run", r, *truth])),
        Step("label store", run.label_db.is_file, lambda: _cli(["labels", "init", "--run", r])),
    ]
    if cfg.detector:
        steps += [
            Step("detectors (single class, pseudo-label classes)",
                 lambda: all((det / n / "model.pt").is_file() for n in ("single", "pseudo")),
                 lambda: _train_detectors(cfg, run)),
            Step("detect + evaluate (test split)",
                 lambda: {"single", "pseudo"} <= set(_metrics(run).get("detection", {})),
                 lambda: [
                     (_cli(["detect", "--run", r, "--out", run.predictions_file(n, "test"),
                            "--model", n]),
                      _cli(["evaluate-detector", run.predictions_file(n, "test"),
                            "--manifest", m, "--run", r, "--name", n]))
                     for n in ("single", "pseudo")
                 ]),
        ]
        if cfg.truth:
            steps += [
                Step("simulated corrections",
                     lambda: any(run.path.glob(".corrections_done")),
                     lambda: (simulate_corrections(r, cfg.truth, cfg.correction_share,
                                                   cfg.annotator, cfg.seed),
                              (run.path / ".corrections_done").touch())),
                Step("fine-tune on corrected labels", lambda: "finetune" in _metrics(run),
                     lambda: _jobs(run, {"finetune": [
                         "finetune", "--run", r, "--epochs", cfg.finetune_epochs,
                         "--user", cfg.annotator,
                         *(["--reset-head"] if _new_classes(run) else []),
                     ]})),
            ]
    if cfg.graph:
        def graph_step() -> None:
            preds = []
            if cfg.detector:
                _jobs(run, {"detect-all": ["detect", "--run", r, "--out", pred_all,
                                           "--split", "all", "--model", "pseudo"]})
                # the pseudo-label model's detections on every key slice; neighbour-slice
                # support is left out here to keep the CPU pipeline short
                preds = ["--predictions", pred_all, "--detector-model", "pseudo",
                         "--neighbour-slices", "0"]
            _cli(["graph", "--run", r, *truth, *preds])

        steps.append(Step("lesion graph", lambda: "matching" in _metrics(run), graph_step))
    steps.append(Step("report", lambda: False, lambda: _report(r)))
    return steps


def _report(run_dir: Path) -> None:
    from .report import write_report

    path = write_report(run_dir)
    print(f"report: {path}")


def run_pipeline(cfg: PipelineConfig, *, force: Sequence[str] = ()) -> list[tuple[str, str, float]]:
    """Run the missing steps; returns ``(step, "ran" | "skipped", seconds)`` for each."""
    done = []
    steps = pipeline_steps(cfg)
    for i, step in enumerate(steps, start=1):
        t = time.perf_counter()
        if step.name not in force and step.done():
            print(f"[pipeline] {step.name}: already done, skipped")
            done.append((step.name, "skipped", 0.0))
            continue
        # "(step i/n)" is what a job of the pipeline reads its progress from
        print(f"[pipeline] {step.name} ... (step {i}/{len(steps)})", flush=True)
        step.run()
        dt = time.perf_counter() - t
        print(f"[pipeline] {step.name}: done in {dt:.1f} s", flush=True)
        done.append((step.name, "ran", dt))
    return done

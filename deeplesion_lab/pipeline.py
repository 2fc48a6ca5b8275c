"""The whole lab pipeline, step by step, each step skipped when it is done.

``deeplesion-lab pipeline`` (and ``make lab`` / ``make demo``) run, in order: manifest, embed,
mine, evaluate, label store, detectors (single class and pseudo-label classes, side by side on
two cores), detection evaluation, simulated corrections + fine-tuning (only with a truth file: a
stand-in for people), lesion graph, report. Each step is the library function its command
calls (:mod:`deeplesion_lab.steps`), with that step's own done check; the long ones (detector
training, fine-tuning, detections on every key slice) run as jobs of the run
(:mod:`deeplesion_lab.jobs`: a process each, side by side where they can, with a record,
progress and log), started with the command line a user would type.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import LabError
from .run import RunDir
from .steps.corrections import corrections_done, simulate_corrections
from .steps.detect import (
    detect_run,
    detections_evaluated,
    detectors_done,
    evaluate_detections,
    finetune_done,
)
from .steps.embed import EmbedSettings, embed_done, embed_run
from .steps.evaluate import evaluate_done, evaluate_step
from .steps.graph import graph_done, graph_step
from .steps.labels import init_label_store, label_store_done
from .steps.mine import MineSettings, mine_done, mine_run
from .steps.report import report_done, report_step

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
    hold_out: str | None = "test"
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
    todo = [n for n in ("single", "pseudo") if not detectors_done(run, [n])]
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


def _new_classes(run: RunDir) -> bool:
    """Whether the corrected labels of the training lesions name other classes than those the
    pseudo-label detector was trained on: a new one, or one no training lesion keeps. Its
    classes are the pseudo-labels of the training split; a type the miner gave only to val or
    test lesions is not one of them."""
    from .detection.labels_table import BACKGROUND_LABELS, IGNORE_LABELS
    from .detection.train import select_split
    from .labels import LabelStore

    train = set(select_split(run.load_manifest(), "train")["lesion_id"].astype(str))
    pseudo = run.load_pseudo_labels()
    mined = set(pseudo.loc[pseudo["lesion_id"].astype(str).isin(train), "label"].astype(str))
    with LabelStore.open(run.label_db) as store:
        cur = store.current_labels()
    current = set(cur.loc[cur["lesion_id"].astype(str).isin(train), "label"].astype(str))
    return current - BACKGROUND_LABELS - IGNORE_LABELS != mined - BACKGROUND_LABELS - IGNORE_LABELS


def pipeline_steps(cfg: PipelineConfig) -> list[Step]:
    """The steps for ``cfg``, in order."""
    run = RunDir(cfg.run_dir)
    m, r = Path(cfg.manifest), cfg.run_dir
    from .detection.workflow import ENSEMBLE_MODEL, ensemble_ready

    def detected_models() -> list[str]:
        # the two detectors, and both as one ensemble (CenterNets only)
        return ["single", "pseudo"] + ([ENSEMBLE_MODEL] if ensemble_ready(run) else [])

    def manifest_step() -> None:
        from .manifest import write_manifest

        if cfg.source_csv is None:
            raise LabError(f"{m}: manifest not found and no source CSV given")
        res = write_manifest(cfg.source_csv, m)
        print(res.info.summary())
        print(f"wrote {len(res.lesions)} lesions to {res.manifest_path}")

    def detect_and_evaluate() -> None:
        for n in detected_models():
            detect_run(run, run.predictions_file(n, "test"), model=n)
            evaluate_detections(run.predictions_file(n, "test"), run=run, manifest=m, name=n)

    steps = [
        Step("manifest", m.is_file, manifest_step),
        Step("embed", lambda: embed_done(run),
             lambda: embed_run(run, m, EmbedSettings(epochs=cfg.embed_epochs,
                                                     hold_out=cfg.hold_out), truth=cfg.truth)),
        Step("mine", lambda: mine_done(run),
             lambda: mine_run(run, MineSettings(clusters=cfg.clusters,
                                                hold_out=cfg.hold_out))),
        Step("evaluate", lambda: evaluate_done(run),
             lambda: evaluate_step(run, truth=cfg.truth)),
        Step("label store", lambda: label_store_done(run), lambda: init_label_store(run)),
    ]
    if cfg.detector:
        steps += [
            Step("detectors (single class, pseudo-label classes)", lambda: detectors_done(run),
                 lambda: _train_detectors(cfg, run)),
            Step("detect + evaluate (test split)",
                 lambda: detections_evaluated(run, detected_models()), detect_and_evaluate),
        ]
        if cfg.truth:
            steps += [
                Step("simulated corrections", lambda: corrections_done(run, cfg.annotator),
                     lambda: simulate_corrections(run, cfg.truth, cfg.correction_share,
                                                  cfg.annotator, cfg.seed)),
                Step("fine-tune on corrected labels", lambda: finetune_done(run),
                     lambda: _jobs(run, {"finetune": [
                         "finetune", "--run", r, "--epochs", cfg.finetune_epochs,
                         "--user", cfg.annotator,
                         *(["--reset-head"] if _new_classes(run) else []),
                     ]})),
            ]
    if cfg.graph:
        def lesion_graph() -> None:
            preds: dict = {}
            if cfg.detector:
                # the two detectors as one (the pseudo-label model alone where they cannot be
                # averaged) on every key slice; neighbour-slice support is left out here to
                # keep the CPU pipeline short
                model = ENSEMBLE_MODEL if ensemble_ready(run) else "pseudo"
                pred_all = run.predictions_file(model, "all")
                _jobs(run, {"detect-all": ["detect", "--run", r, "--out", pred_all,
                                           "--split", "all", "--model", model]})
                preds = {"predictions": pred_all, "detector_model": model,
                         "neighbour_slices": 0}
            graph_step(run, truth=cfg.truth, **preds)

        steps.append(Step("lesion graph", lambda: graph_done(run), lesion_graph))
    steps.append(Step("report", lambda: report_done(run), lambda: report_step(run)))
    return steps


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

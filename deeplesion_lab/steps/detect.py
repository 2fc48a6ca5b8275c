"""The detector steps: detections of a trained model on a split, their FROC evaluation, and
the done checks of training and fine-tuning (which run as jobs: :mod:`deeplesion_lab.jobs`).

``deeplesion-lab detect`` and ``evaluate-detector`` parse their arguments and call
:func:`detect_run` and :func:`evaluate_detections`; so does the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from ..errors import LabError
from ..run import RunDir

__all__ = [
    "detect_run",
    "detections_evaluated",
    "detectors_done",
    "evaluate_detections",
    "finetune_done",
]


def detectors_done(run: RunDir, names: Iterable[str] = ("single", "pseudo")) -> bool:
    """Whether every detector ``names`` has its ``detector/<name>/model.pt``."""
    return all((run.detector_dir / n / "model.pt").is_file() for n in names)


def detections_evaluated(run: RunDir, names: Iterable[str] = ("single", "pseudo")) -> bool:
    """Whether ``metrics.json`` has a ``detection.<name>`` entry for every name."""
    return set(names) <= set(run.load_metrics().get("detection", {}))


def finetune_done(run: RunDir) -> bool:
    """Whether a fine-tuning recorded its figures (``metrics.json``'s ``finetune``)."""
    return "finetune" in run.load_metrics()


def detect_run(
    run: RunDir | str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    split: str = "test",
    batch_size: int | None = None,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Run detector ``model`` (default the latest trained) over the key slices of ``split`` of
    the run's manifest and write the predictions CSV ``out``; returns the predictions.

    A model fine-tuned with the lesion embedder as its typer (its folder has
    :data:`~deeplesion_lab.detection.typer.TYPER_FILE`) names its detections that way, as
    ``finetune`` scored it."""
    from ..detection.predict import write_predictions
    from ..detection.typer import type_model_predictions
    from ..detection.workflow import ensemble_members, load_detector, model_dir

    run = run if isinstance(run, RunDir) else RunDir(run)
    run.info()
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise LabError(f"{out}: predictions are written as .csv")
    name, det = load_detector(run, model, device=device, num_threads=threads, progress=progress)
    members = ensemble_members(name)
    if len(members) > 1:
        say(f"model {name}: an ensemble of {', '.join(members)} (their heatmaps and boxes "
            f"averaged; {members[0]} names the types)")
    manifest = run.load_manifest()
    pred = det.predict(manifest, split, batch_size=batch_size)
    pred, typed = type_model_predictions(run, model_dir(run, members[0]), pred, manifest,
                                         threads=threads or 1)
    if typed:
        say(f"model {name}: types named by the lesion embedder's nearest labelled lesions "
            f"({members[0]}'s typer.parquet)")
    write_predictions(pred, out)
    n_img = pred["file_name"].nunique()
    if det.predict_context_summary_ is not None:
        say(det.predict_context_summary_)
    say(f"model {name} ({', '.join(det.classes_)}): {len(pred)} detections on {n_img} key "
        f"slices of the {split} split; {det.predict_ms_per_image_:.1f} ms/image")
    say(f"wrote {out}")
    return pred


def evaluate_detections(
    predictions: str | Path,
    *,
    run: RunDir | str | Path | None = None,
    manifest: str | Path | None = None,
    split: str = "test",
    name: str | None = None,
    iou: float = 0.5,
    noisy: str = "ignore",
    plot: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Score a predictions CSV with the DeepLesion protocol (FROC at IoU >= ``iou``).

    The key slices of ``split`` of ``manifest`` (default the one the ``run`` records) are
    scored; with ``plot`` a FROC plot (PNG and HTML) is written beside the CSV; with ``run``
    the numbers go into ``metrics.json`` under ``detection.<name>`` (default the CSV's stem).
    Returns the metrics entry.
    """
    from ..detection.froc import evaluate_predictions, read_predictions
    from ..detection.workflow import record_evaluation
    from ..manifest import read_manifest

    predictions = Path(predictions)
    run_dir = None
    if run is not None:
        run_dir = run if isinstance(run, RunDir) else RunDir(run)
        run_dir.info()
    if manifest is None and run_dir is None:
        raise LabError("evaluate-detector: give --manifest MANIFEST, or --run RUN_DIR to use the "
                       "manifest its run.json records")
    pred = read_predictions(predictions)
    man = read_manifest(manifest if manifest is not None else run_dir.manifest_path())
    res = evaluate_predictions(pred, man, split, iou_threshold=iou, noisy=noisy)
    name = name or predictions.stem
    say(f"{name}: {res.n_lesions} lesions on {res.n_images} key slices of the {split} "
        f"split ({res.n_noisy_excluded} noisy excluded); {res.n_detections} detections"
        + (f" ({res.n_detections_outside} on other images, not scored)"
           if res.n_detections_outside else ""))
    say(res.table())
    if res.per_class:
        say("per class (sensitivity at 0.5 / 1 / 2 / 4 FPs per image):")
        for c, v in res.per_class.items():
            say(f"  {c:<12} " + " / ".join(f"{v[k]:.3f}" for k in ("0.5", "1", "2", "4")))
    plots = {}
    if plot:
        from ..detection.plots import froc_html, plot_froc

        stem = predictions.with_suffix("")
        plots["plot_png"] = str(plot_froc({name: res}, stem.with_name(stem.name + ".froc.png")))
        html = froc_html({name: res}, stem.with_name(stem.name + ".froc.html"))
        if html is not None:
            plots["plot_html"] = str(html)
        for v in plots.values():
            say(f"wrote {v}")
    entry = record_evaluation(run_dir, name, res, predictions=str(predictions.resolve()),
                              **plots)
    ci = entry["interval95"]
    low, high = ci["interval"]["mean_0.5-4"]
    say(f"mean 0.5-4: {res.mean_sensitivity_0_5_to_4:.3f}, 95 % interval [{low:.3f}, "
        f"{high:.3f}] ({ci['n_boot']} bootstrap resamples of the {res.n_images} key slices)")
    if run_dir is not None:
        say(f"metrics: {run_dir.metrics} (detection.{name})")
    return entry

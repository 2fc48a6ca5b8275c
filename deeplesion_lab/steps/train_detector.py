"""The detector-training step: a new detector on the run's training key slices, recorded.

``deeplesion-lab train-detector`` parses its arguments and calls :func:`train_detector_run`;
the pipeline runs that command as a background job (two detectors train side by side).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import LabError
from ..run import RunDir

__all__ = ["train_detector_run"]


def train_detector_run(
    run: RunDir | str | Path,
    classes: str | None = None,
    *,
    labels: str | Path | None = None,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    ignore_from: str | Path | None = None,
    ignore_score: float = 0.5,
    overwrite: bool = False,
    say: Callable[[str], None] = print,
):
    """Train a detector of the run and record it (``detector/NAME``, ``latest.json``,
    ``metrics.json``'s ``detector_training.NAME``).

    Parameters
    ----------
    run : RunDir or path
    classes : {"single", "pseudo", "labels"}, optional
        One class "lesion"; the run's mined pseudo-labels as classes; or the classes of the
        labels table ``labels``. Default: "labels" when ``labels`` is given, else "single".
    labels : path, optional
        Labels table (parquet/CSV: ``lesion_id, label``) for ``classes="labels"``.
    name : str, optional
        Model name under ``RUN_DIR/detector`` (default: ``classes``).
    params : mapping, optional
        ``LesionDetector`` parameters; default
        :func:`~deeplesion_lab.detection.workflow.detector_params` ``(new=True)``.
    ignore_from : path, optional
        Predictions on the training slices whose confident boxes (score >= ``ignore_score``)
        that match no annotation become ignore regions.
    overwrite : bool, default False
        Start over when ``NAME`` holds a training made with other settings (otherwise an
        interrupted training resumes).
    say : callable, default print
        Where the summary lines go.

    Returns
    -------
    LesionDetector
        The fitted detector. Under ``torchrun`` only rank 0 writes the records.
    """
    from ..detection.dataset import mined_ignore_boxes
    from ..detection.froc import read_predictions
    from ..detection.labels_table import labels_from_pseudo, read_labels_table
    from ..detection.train import LesionDetector, select_split
    from ..detection.workflow import detector_params, model_dir, set_latest
    from ..distributed import is_main

    run = run if isinstance(run, RunDir) else RunDir(run)
    run.info()
    classes = classes or ("labels" if labels is not None else "single")
    if classes not in ("single", "pseudo", "labels"):
        raise LabError(f"classes must be single, pseudo or labels, not {classes!r}")
    if classes == "labels" and labels is None:
        raise LabError("--classes labels needs --labels TABLE")
    if classes != "labels" and labels is not None:
        raise LabError(f"--labels goes with --classes labels, not --classes {classes}")
    if classes == "single":
        table, source = None, "single class"
    elif classes == "pseudo":
        table = labels_from_pseudo(run.load_pseudo_labels(), str(run.pseudo_labels))
        source = str(run.pseudo_labels)
    else:
        table = read_labels_table(labels)
        source = str(Path(labels).resolve())
    name = name or classes
    folder = model_dir(run, name)
    manifest = run.load_manifest()
    ignore = None
    if ignore_from is not None:
        ignore = mined_ignore_boxes(read_predictions(ignore_from),
                                    select_split(manifest, "train"), ignore_score)
    det = LesionDetector(**(dict(params) if params is not None else detector_params(new=True)))
    if is_main():
        say(f"training {name} ({classes}) -> {folder}")
    det.fit(manifest, table, checkpoint_dir=folder, resume=not overwrite, ignore_boxes=ignore,
            lineage={"labels_source": source, "label_snapshot_id": None, "run": str(run.path),
                     "ignore_from": str(ignore_from) if ignore_from else None})
    if not is_main():  # under torchrun: rank 0 writes the records and reports
        return det
    set_latest(run, name)
    secs = sum(h["seconds"] for h in det.history_)
    n_img = sum(h["images"] for h in det.history_)
    ips = n_img / secs if secs else None
    run.update_metrics({"detector_training": {name: {
        "classes": det.classes_, "epochs": det.epochs, "n_images": det.lineage_["n_images"],
        "n_ignore_regions": det.lineage_["n_ignore_regions"], "train_images_per_s": ips,
        "checkpoint": str(folder / "model.pt"),
    }}})
    last = det.history_[-1] if det.history_ else {}
    if det.context_summary_ is not None:  # missing context slices, in one line
        say(det.context_summary_)
    say(f"classes: {', '.join(det.classes_)}")
    say(f"{det.lineage_['n_images']} training key slices, "
        f"{det.lineage_['n_ignore_regions']} ignore regions (unannotated/noisy/unlabelled)")
    if last:
        say(f"epoch {last['epoch']}: loss {last['loss']:.4f}"
            + (f"; {ips:.2f} training images/s" if ips else ""))
    say(f"wrote {folder / 'model.pt'}")
    return det

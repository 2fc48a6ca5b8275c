"""Detector steps on a run directory: train, detect, evaluate, fine-tune (what the commands do).

Models live in ``RUN_DIR/detector/<name>/`` (see :mod:`deeplesion_lab.detection.train`);
``RUN_DIR/detector/latest.json`` names the most recently trained one. Metrics go to
``RUN_DIR/metrics.json``::

    detection.<name>: sensitivity {"0.5", "1", "2", "4", "8", "16"}, mean_sensitivity_0_5_to_4,
                      per_class {type: {...}}, counts, split, predictions
    detector_training.<name>: classes, epochs, images, training images/s, checkpoint
    finetune: before {...}, after {...} (the same fields as detection.<name>), model, parent,
              labels source, label_snapshot_id, corrected (labels differing from the
              pseudo-labels), epochs, heads_only (the features were kept; the CenterNet's
              default, :data:`FINETUNE_HEADS_ONLY`)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import write_json
from ..errors import LabError
from ..manifest import manifest_images_root
from ..run import RunDir
from .bootstrap import MEAN_KEY, bootstrap_sensitivity, paired_difference
from .froc import FROCResult, evaluate_predictions, names_lesion_types, results_table

__all__ = [
    "detector_params",
    "model_dir",
    "latest_model",
    "set_latest",
    "load_detector",
    "record_evaluation",
    "resolve_finetune_labels",
    "store_added_lesions",
    "run_finetune",
]


#: Architecture of a new detector when ``--arch`` is not given: the CenterNet-style detector,
#: which won the same-CPU-budget comparison (``bench/results/detector_arch.md``).
DEFAULT_ARCH = "centernet"

#: Default epochs of a new detector per architecture (``train-detector`` without ``--epochs``):
#: about 4 CPU-minutes each at the demo's 24 patients for the centernet.
TRAIN_EPOCHS = {"centernet": 128, "fasterrcnn": 10, "fcos": 10}

#: Default fine-tuning epochs per architecture (``finetune`` without ``--epochs``).
FINETUNE_EPOCHS = {"centernet": 30, "fasterrcnn": 3, "fcos": 3}

#: Default width of a new centernet (``--width``).
DEFAULT_WIDTH = 32

#: Default copy-paste augmentation of a new detector per architecture (``--copy-paste``; the
#: ``copy_paste`` of :class:`~.dataset.LesionSliceDataset`): up to 2 lesions of other training
#: slices pasted into each training window. At the same CPU budget it raised the CenterNet's
#: sensitivity at 4 FP by +0.116 [+0.069, +0.175] over 4 demo seeds
#: (``bench/results/detector_arch.md``, session 8); the other architectures were not measured.
COPY_PASTE = {"centernet": 2, "fasterrcnn": 0, "fcos": 0}

#: Default range of a pasted lesion's own rescaling (copy-paste) of a new detector per
#: architecture (``--paste-scale``; ``paste_scale_range`` of :class:`~.train.LesionDetector`,
#: drawn log-uniformly): pasted lesions from half to twice their size give the detector the
#: sizes that 16 training patients lack. At the same CPU budget it raised the CenterNet's
#: sensitivity at 4 FP over 4 demo seeds, and again on 4 fresh ones
#: (``bench/results/detector_arch.md``, session 10). Listed architectures only.
PASTE_SCALE_RANGE: dict[str, tuple[float, float]] = {"centernet": (0.5, 2.0)}

#: Default distance (mm) of the two context slices above and below the key slice for a new
#: detector per architecture (``--slice-spacing-mm``; ``slice_spacing_mm`` of
#: :class:`~.train.LesionDetector`; 2 mm where not listed). At 4 mm the channels show more of a
#: lesion's 3-D shape (it is widest on its key slice); at the same CPU budget the CenterNet's
#: sensitivity at 4 FP rose by +0.091 [+0.038, +0.144] on 4 fresh demo seeds (rule fixed
#: before they ran; ``bench/results/detector_ensemble.md``, session 13).
SLICE_SPACING_MM: dict[str, float] = {"centernet": 4.0}

#: Default weight of the class loss of a new multi-class detector per architecture
#: (``--class-loss-weight``; ``class_loss_weight`` of :class:`~.train.LesionDetector`). With the
#: pseudo-labels' classes at full weight (1.0) the CenterNet found fewer lesions than the
#: single-class one (-0.059 [-0.110, -0.010] at 4 FP, 4 demo seeds); at 0.3 it found more than
#: at 1.0 (+0.054 [+0.003, +0.102]) and as many as the single-class one (-0.005 [-0.051,
#: +0.034]) (``bench/results/detector_class_weight.md``, session 9). Others keep 1.0.
CLASS_LOSS_WEIGHT = {"centernet": 0.3}

#: Fine-tuning's default learning rate, relative to the base model's.
FINETUNE_LR_FACTOR = 0.25

#: Architectures whose fine-tuning trains the heads only (the features keep their weights
#: and batch-norm statistics; :meth:`~.centernet.CenterNetLesion.set_freeze_features`). For the
#: CenterNet, fine-tuning every layer on the same training slices lowered sensitivity (0.48 to
#: 0.41-0.45 mean 0.5-4 FP at lr 1e-4 to 2.5e-4); the heads alone keep it
#: (``bench/results/detector_finetune.md``).
FINETUNE_HEADS_ONLY: dict[str, bool] = {"centernet": True}

#: Bootstrap resamples behind the 95 % intervals written to metrics.json.
N_BOOT = 1000

#: Whether ``finetune`` names the fine-tuned model's detections with the run's lesion embedder
#: fitted on the training lesions' labels (:mod:`~deeplesion_lab.detection.typer`) instead of
#: the class head; ``bench/results/detector_typer.md`` compares the two.
FINETUNE_TYPER = True

#: Labelled neighbours that vote on a detection's type.
TYPER_NEIGHBORS = 5

#: Whether a typed detection's score is multiplied by the vote share of its type (a box whose
#: type is unclear ranks lower): the candidate picked on demo seeds 101-104 in
#: ``bench/results/detector_typer.md`` (session 12), before the fresh seeds ran.
TYPER_RESCORE = True


def detector_params(
    *,
    new: bool,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
    amp: bool = True,
    workers: int | None = None,
    micro_batches: int | None = None,
    checkpoint_every: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    unannotated: str | None = None,
    seed: int | None = None,
    copy_paste: int | None = None,
    class_loss_weight: float | None = None,
    paste_scale: tuple[float, float] | None = None,
    arch: str | None = None,
    width: int | None = None,
    optimizer: str = "adamw",
    window: str = "soft tissue",
    train_crop: int | None = None,
    box_batch: int | None = None,
    box_head: int | None = None,
    backbone: str = "mobilenet_v3_large_fpn",
    norm: str = "batch",
    backbone_weights: str | Path | None = None,
    image_size: int = 512,
    spacing_mm: float = 0.8,
    slice_spacing_mm: float | None = None,
) -> dict[str, Any]:
    """``LesionDetector`` parameters, with the defaults that follow the device and the
    architecture (what ``train-detector`` and ``finetune`` use).

    Parameters
    ----------
    new : bool
        A new detector (every network and input setting, with its defaults) or a loaded one
        (only what is given here overrides what its checkpoint holds: device, threads,
        progress, and the training settings that are not None).
    device : str, default "cpu"
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. On CUDA the defaults are whole images
        (``train_crop=None``), 128 box samples and a 1024-wide box head; on the CPU 128-px
        windows, 32 and 256. (That the device exists is checked when training starts.)
    threads : int, optional
        Torch CPU threads (``num_threads``).
    progress, amp : bool, default True
    epochs : int, optional
        Default for a new detector: :data:`TRAIN_EPOCHS` of its architecture.
    lr : float, optional
        Default for a new detector: 0.001 with ``adamw``, 0.02 with ``sgd``.
    copy_paste : int, optional
        Lesions pasted per training window (0: off). Default for a new detector:
        :data:`COPY_PASTE` of its architecture; a loaded one keeps its checkpoint's.
    class_loss_weight : float, optional
        Weight of the class loss of a multi-class model (a single-class one has none).
        Default for a new detector: :data:`CLASS_LOSS_WEIGHT` of its architecture (1.0 where
        not listed); a loaded one keeps its checkpoint's.
    paste_scale : (float, float), optional
        Range of a pasted lesion's own rescaling (copy-paste only). Default for a new
        detector that pastes: :data:`PASTE_SCALE_RANGE` of its architecture (``scale_range``
        where not listed); a loaded one keeps its checkpoint's.
    arch : str, optional
        Default :data:`DEFAULT_ARCH`.
    slice_spacing_mm : float, optional
        Distance of the context slices from the key slice. Default for a new detector:
        :data:`SLICE_SPACING_MM` of its architecture (2 where not listed).
    width : int, optional
        Default :data:`DEFAULT_WIDTH`.
    window : str
        A preset name or ``LOW,HIGH`` (:func:`parse_window`).
    train_crop : int, optional
        Window side in px; ``0`` for whole images; default as for ``device``, and whole
        images when the default window would not be smaller than the canvas.
    box_batch, box_head : int, optional
        ``box_batch_size`` and ``box_head_size`` (default as for ``device``).
    workers, micro_batches, checkpoint_every, batch_size, unannotated, seed, optimizer,
    backbone, norm, backbone_weights, image_size, spacing_mm
        Passed on as the estimator's parameters of the same name (None: its default).
    """
    from ..device import resolve_device

    name = str(device or "cpu")
    cuda = name.startswith("cuda") or (
        name == "auto" and resolve_device("auto", quiet=True).type == "cuda")
    out: dict[str, Any] = {"device": device, "num_threads": threads, "progress": progress}
    if not amp:
        out["amp"] = False
    given = {"workers": workers, "micro_batches": micro_batches,
             "checkpoint_every": checkpoint_every, "epochs": epochs, "batch_size": batch_size,
             "lr": lr, "unannotated": unannotated, "seed": seed, "copy_paste": copy_paste,
             "class_loss_weight": class_loss_weight,
             "paste_scale_range": tuple(paste_scale) if paste_scale is not None else None}
    out.update({k: v for k, v in given.items() if v is not None})
    if new:
        if lr is None:
            out["lr"] = 0.001 if optimizer == "adamw" else 0.02
        crop = train_crop if train_crop is not None else (None if cuda else 128)
        if train_crop is None and crop is not None and crop >= image_size:
            crop = None  # the default window is no smaller than the canvas: whole images
        arch = arch or DEFAULT_ARCH
        out.setdefault("epochs", TRAIN_EPOCHS[arch])
        out.setdefault("copy_paste", COPY_PASTE.get(arch, 0))
        if arch in CLASS_LOSS_WEIGHT:
            out.setdefault("class_loss_weight", CLASS_LOSS_WEIGHT[arch])
        if arch in PASTE_SCALE_RANGE and out.get("copy_paste"):
            out.setdefault("paste_scale_range", PASTE_SCALE_RANGE[arch])
        out.update(
            arch=arch,
            width=width or DEFAULT_WIDTH,
            optimizer=optimizer,
            window=parse_window(window),
            train_crop=crop or None,
            box_batch_size=box_batch or (128 if cuda else 32),
            backbone=backbone,
            norm=norm,
            backbone_weights=str(backbone_weights) if backbone_weights else None,
            image_size=image_size,
            spacing_mm=spacing_mm,
            slice_spacing_mm=(float(slice_spacing_mm) if slice_spacing_mm is not None
                              else SLICE_SPACING_MM.get(arch, 2.0)),
            box_head_size=box_head or (1024 if cuda else 256),
        )
    return out


def parse_window(text: str) -> str | tuple[float, float]:
    """``--window``: a preset name or ``LOW,HIGH`` in HU."""
    from ..images import WINDOW_PRESETS

    t = str(text).strip()
    if "," in t:
        try:
            low, high = (float(v) for v in t.split(","))
        except ValueError:
            raise LabError(f"--window {text!r}: expected LOW,HIGH in HU (e.g. -160,240)") from None
        if not low < high:
            raise LabError(f"--window {text!r}: LOW must be below HIGH")
        return (low, high)
    if t.lower() != "wide" and t.lower() not in WINDOW_PRESETS:
        raise LabError(f"--window {text!r}: unknown preset; use LOW,HIGH or one of wide, "
                       f"{', '.join(WINDOW_PRESETS)}")
    return t.lower()


#: The pipeline's detector for missing-annotation proposals and the viewer: its two detectors
#: (trained side by side in ``make lab``) as one CenterNet ensemble, the pseudo-label model
#: first (it names the types). With 2-mm context slices it found +0.068 more lesions at 4 FP
#: than the single-class model on fresh seeds; with the 4-mm default it is level with it and
#: its missing-annotation recall a little higher (``bench/results/detector_ensemble.md``,
#: ``detector_ensemble_z4.md``, session 13).
ENSEMBLE_MODEL = "pseudo+single"


def ensemble_members(name: str) -> list[str]:
    """The model names of an ensemble name ``"a+b"`` (``[name]`` for one model)."""
    return str(name).split("+")


def ensemble_ready(run: RunDir, name: str = ENSEMBLE_MODEL) -> bool:
    """Whether every member of ensemble ``name`` is a trained CenterNet of the run (other
    architectures cannot be averaged)."""
    for member in ensemble_members(name):
        cfg = run.detector_dir / member / "config.json"
        if not (run.detector_dir / member / "model.pt").is_file() or not cfg.is_file():
            return False
        if json.loads(cfg.read_text()).get("arch") != "centernet":
            return False
    return True


def model_dir(run: RunDir, name: str) -> Path:
    """``RUN_DIR/detector/<name>`` (one model; an ensemble ``"a+b"`` has no folder)."""
    if not name or "/" in name or "+" in name or name.startswith("."):
        raise LabError(f"invalid model name {name!r}"
                       + (" (an ensemble of models has no folder of its own)" if "+" in str(name)
                          else ""))
    return run.detector_dir / name


def _models(run: RunDir) -> list[Path]:
    if not run.detector_dir.is_dir():
        return []
    return sorted((p for p in run.detector_dir.glob("*/model.pt")), key=lambda p: p.stat().st_mtime)


def latest_model(run: RunDir, *, multi_class: bool = False) -> str:
    """Name of the latest trained model (``latest.json``, else the newest ``model.pt``).

    With ``multi_class``, the newest model whose classes are not just "lesion".
    """
    latest = run.detector_dir / "latest.json"
    if not multi_class and latest.is_file():
        name = json.loads(latest.read_text()).get("name")
        if name and (run.detector_dir / name / "model.pt").is_file():
            return name
    for p in reversed(_models(run)):
        if not multi_class:
            return p.parent.name
        cfg = p.parent / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("classes") != ["lesion"]:
            return p.parent.name
    what = "multi-class detector" if multi_class else "detector"
    raise LabError(
        f"no trained {what} in {run.detector_dir}; train one with "
        f"`deeplesion-lab train-detector --run {run.path}"
        f"{' --classes pseudo' if multi_class else ''}`"
    )


def set_latest(run: RunDir, name: str) -> None:
    """Record ``name`` as the latest model."""
    write_json({"name": name}, run.detector_dir / "latest.json")


def load_detector(run: RunDir, name: str | None, **overrides: Any):
    """Load ``RUN_DIR/detector/<name>/model.pt`` (the latest when ``name`` is None).

    ``name`` ``"a+b"`` loads models ``a`` and ``b`` as one
    :class:`~deeplesion_lab.detection.ensemble.CenterNetEnsemble` (inference only): the
    returned detector is ``a``'s, with its classes, predicting with the ensemble.
    """
    from .train import LesionDetector

    name = name or latest_model(run)
    members = ensemble_members(name)
    dets = []
    for member in members:
        if not member:
            raise LabError(f"invalid model name {name!r}: an ensemble is written 'a+b'")
        path = model_dir(run, member) / "model.pt"
        if not path.is_file():
            known = ", ".join(p.parent.name for p in _models(run)) or "none"
            raise LabError(f"{path}: no such model (trained models: {known})")
        dets.append(LesionDetector.load(path, **overrides))
    if len(dets) == 1:
        return name, dets[0]
    from .ensemble import CenterNetEnsemble, EnsembleError

    try:
        ens = CenterNetEnsemble([d.model_ for d in dets])
    except EnsembleError as exc:
        archs = ", ".join(f"{m}: {d.arch}" for m, d in zip(members, dets, strict=True))
        raise LabError(f"model {name!r}: {exc} ({archs})") from exc
    det = dets[0]
    det.model_ = ens.eval()
    det.lineage_ = {**det.lineage_, "ensemble": members}
    return name, det


def record_evaluation(
    run: RunDir | None,
    name: str,
    result: FROCResult,
    **extra: Any,
) -> dict:
    """Write ``detection.<name>`` into the run's metrics (when a run is given); return it.

    The entry holds the sensitivities, their 95 % bootstrap intervals over the evaluated images
    (``interval95``, :func:`~deeplesion_lab.detection.bootstrap.bootstrap_sensitivity`) and
    ``extra``.
    """
    entry = {**result_metrics(result), **{k: v for k, v in extra.items() if v is not None}}
    if run is not None:
        run.update_metrics({"detection": {name: entry}})
    return entry


def resolve_finetune_labels(
    run: RunDir,
    labels_path: Path | None,
    snapshot: str | None,
    *,
    user: str = "finetune",
    store: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The corrected labels for fine-tuning and where they came from.

    ``--labels TABLE`` wins; else ``--snapshot ID`` of the label store; else a new snapshot of
    the store (``store``: a SQLite path or ``postgresql://`` URL; default
    ``RUN_DIR/labels.sqlite``).
    """
    from .labels_table import labels_from_store, read_labels_table

    if labels_path is not None:
        if snapshot is not None:
            raise LabError("give either --labels or --snapshot, not both")
        return read_labels_table(labels_path), {"labels_source": str(Path(labels_path).resolve()),
                                                "label_snapshot_id": None}
    from ..labels.store import run_store_target

    target, namespace = run_store_target(run, store)  # --store, run.json's server, labels.sqlite
    db = str(target)
    if not db.startswith("postgresql") and not Path(db).is_file():
        raise LabError(
            f"no corrected labels: {db} does not exist; pass --labels TABLE "
            "(parquet/CSV with lesion_id, label) or start the label store"
        )
    snap = int(snapshot) if snapshot is not None and str(snapshot).isdigit() else snapshot
    df, sid = labels_from_store(db, snap, user=user, namespace=namespace)
    return df, {"labels_source": _redact(db), "label_snapshot_id": sid}


def store_added_lesions(run: RunDir, store: str | None = None) -> pd.DataFrame | None:
    """The lesions people added in the run's label store (None when there is no store)."""
    from ..labels import LabelStore
    from ..labels.store import run_store_target

    target, namespace = run_store_target(run, store)
    db = str(target)
    if not db.startswith("postgresql") and not Path(db).is_file():
        return None
    with LabelStore.open(db, namespace=namespace) as s:
        return s.added_lesions()


def _redact(url: str) -> str:
    """A store location without its password (``postgresql://user:secret@host`` -> ``user@``)."""
    import re

    return re.sub(r"(postgres(?:ql)?://[^:/@]+):[^@]*@", r"\1@", url)


def _n_corrected(run: RunDir, labels: pd.DataFrame) -> int | None:
    if not run.pseudo_labels.is_file():
        return None
    pseudo = pd.read_parquet(run.pseudo_labels)[["lesion_id", "label"]]
    m = labels.merge(pseudo, on="lesion_id", suffixes=("", "_pseudo"))
    return int((m["label"].astype(str) != m["label_pseudo"].astype(str)).sum())


def run_finetune(
    run: RunDir,
    labels: pd.DataFrame,
    source: Mapping[str, Any],
    *,
    base: str | None = None,
    name: str | None = None,
    class_map: Mapping[str, str] | None = None,
    reset_head: bool = False,
    params: Mapping[str, Any] | None = None,
    eval_split: str = "test",
    ignore_boxes: Mapping | None = None,
    overwrite: bool = False,
    added: pd.DataFrame | None = None,
    typer: bool | None = None,
    out=print,
) -> dict[str, Any]:
    """Fine-tune ``base`` on ``labels``; evaluate before and after; record everything.

    ``typer`` (default :data:`FINETUNE_TYPER`): when the labels name lesion types and the run
    has its lesion embedder, the fine-tuned model's detections are named by the embedder's
    nearest labelled training lesions (the model folder keeps those labels,
    :func:`~deeplesion_lab.detection.typer.save_model_typer`, so ``detect`` names them the same
    way); the class head's own figures are kept as ``after_class_head``.

    ``added``: lesions people added (accepted proposals,
    :meth:`~deeplesion_lab.labels.LabelStore.added_lesions`); those with a row in ``labels``
    join the training key slices as annotations (:func:`~deeplesion_lab.labels.manifest_with_added`).
    Before and after are scored on the manifest's own annotations (the official ground truth),
    so that the two numbers stay comparable.

    Returns the ``finetune`` metrics entry.
    """
    from .dataset import check_images
    from .labels_table import apply_class_map, class_indices, labels_hash
    from .plots import froc_html, plot_froc
    from .predict import write_predictions
    from .train import select_split

    base = base or latest_model(run, multi_class=True)
    if len(ensemble_members(base)) > 1:
        raise LabError(f"cannot fine-tune the ensemble {base!r}: fine-tune one of its models "
                       f"({', '.join(ensemble_members(base))})")
    base_name, det = load_detector(run, base, **dict(params or {}))
    if "epochs" not in dict(params or {}):
        det.set_params(epochs=FINETUNE_EPOCHS.get(det.arch, 3))
    if "lr" not in dict(params or {}):  # a quarter of the base model's learning rate
        det.set_params(lr=det.lr * FINETUNE_LR_FACTOR)
    labels = apply_class_map(labels, dict(class_map or {}))
    manifest = run.load_manifest()
    train_manifest, n_added = manifest, 0
    if added is not None and len(added):
        from ..labels import manifest_with_added

        use = added[added["lesion_id"].isin(set(labels["lesion_id"].astype(str)))]
        train_manifest = manifest_with_added(manifest, use)
        n_added = int(select_split(train_manifest, "train")["lesion_id"]
                      .isin(set(use["lesion_id"])).sum())
        out(f"training rows: {n_added} lesions people added (accepted proposals) join the "
            "annotations")
    train = select_split(train_manifest, "train")
    # check the labels against the model before anything is written
    new_classes, _ = class_indices(train["lesion_id"].astype(str).tolist(), labels,
                                   None if reset_head else det.classes_,
                                   source=str(source.get("labels_source", "labels")))
    sid = source.get("label_snapshot_id")
    name = name or (f"{base_name}-ft{sid}" if sid is not None
                    else f"{base_name}-ft-{labels_hash(labels)[:8]}")
    folder = model_dir(run, name)
    root = manifest_images_root(manifest)
    check_images(train, root)
    check_images(select_split(manifest, eval_split), root)

    # "(phase K/3)": a job's progress runs through the three parts in order (jobs.ProgressParser)
    out(f"(phase 1/3) before: evaluating {base_name} on the {eval_split} split ...")
    before_pred = det.predict(manifest, eval_split)
    base_lineage = dict(det.lineage_)
    class_aware = names_lesion_types(det.classes_)  # a multi-class detector of lesion types
    before = evaluate_predictions(before_pred, manifest, eval_split, class_aware=class_aware)

    if reset_head and new_classes != det.classes_ and det.arch == "centernet":
        # class heatmaps by name: known classes keep their channel, new ones start from the
        # mean of the old (the lesion score stays trained; see centernet.reset_class_head)
        det.model_.reset_class_head(len(new_classes), list(det.classes_), list(new_classes))
        det.classes_ = list(new_classes)
        reset_head = False
    heads_only = bool(FINETUNE_HEADS_ONLY.get(det.arch)
                      and hasattr(det.model_, "set_freeze_features"))
    if heads_only:
        det.model_.set_freeze_features(True)
    det.set_params(warm_start=True)
    out(f"(phase 2/3) fine-tuning {base_name} into {name} on {len(train)} training lesions ...")
    det.fit(train_manifest, labels, reset_head=reset_head, checkpoint_dir=folder,
            resume=not overwrite, ignore_boxes=ignore_boxes,
            lineage={**source, "finetuned_from": base_name,
                     "class_map": dict(class_map or {}), "n_added_lesions": n_added})
    set_latest(run, name)
    out(f"(phase 3/3) after: evaluating {name} on the {eval_split} split ...")
    after_pred = det.predict(manifest, eval_split)
    after_class_aware = class_aware or names_lesion_types(det.classes_)
    after_head = before_head = None
    use_typer = FINETUNE_TYPER if typer is None else bool(typer)
    if use_typer and after_class_aware and run.embedder.is_file() and run.embeddings.is_file():
        from .typer import save_model_typer, type_model_predictions

        after_head = evaluate_predictions(after_pred, manifest, eval_split, class_aware=True)
        train_ids = set(train["lesion_id"].astype(str))
        typed_by = labels[labels["lesion_id"].astype(str).isin(train_ids)]
        save_model_typer(folder, typed_by, n_neighbors=TYPER_NEIGHBORS, rescore=TYPER_RESCORE,
                         source=str(source.get("labels_source", "labels")))
        after_pred, _ = type_model_predictions(run, folder, after_pred, manifest,
                                               threads=det.num_threads or 1)
        out(f"types of {name}'s detections: the lesion embedder's {TYPER_NEIGHBORS} nearest of "
            f"{len(typed_by)} labelled training lesions (the class head's figures are kept as "
            "after_class_head)")
        # before named the same way, by the base model's own training labels, so that
        # after - before is what the labels changed, not the typer
        before_typed = _type_base_predictions(run, model_dir(run, base_name), base_lineage,
                                              before_pred, manifest, train_ids,
                                              threads=det.num_threads or 1)
        if before_typed is not None:
            before_head = before
            before_pred, before_source = before_typed
            before = evaluate_predictions(before_pred, manifest, eval_split, class_aware=True)
            out(f"types of {base_name}'s detections: the same way, by its own training labels "
                f"({before_source}; the class head's figures are kept as before_class_head)")
        else:
            out(f"{base_name}'s own training labels are not known here, so its class head names "
                "its detections (before_typed_by: class head)")
    after = evaluate_predictions(after_pred, manifest, eval_split, class_aware=after_class_aware)
    p_before = write_predictions(before_pred, run.model_predictions_file(name, eval_split, before=True))
    p_after = write_predictions(after_pred, run.model_predictions_file(name, eval_split))
    curves = {f"before ({base_name})": before, f"after ({name})": after}
    plot_froc(curves, folder / "froc_before_after.png", title="Fine-tuning: before / after")
    froc_html(curves, folder / "froc_before_after.html", title="Fine-tuning: before / after")

    diff = paired_difference(after.curve, before.curve, n_boot=N_BOOT)
    ft = {
        "before": {**result_metrics(before), "model": base_name, "predictions": str(p_before)},
        "after": {**result_metrics(after), "model": name, "predictions": str(p_after)},
        "difference": diff.to_metrics(),
        "model": name,
        "parent": base_name,
        "labels_source": source.get("labels_source"),
        "label_snapshot_id": sid,
        "labels_hash": labels_hash(labels),
        "n_labels": len(labels),
        "corrected": _n_corrected(run, labels),
        "added_lesions": n_added,
        "classes": det.classes_,
        "epochs": det.epochs,
        "heads_only": heads_only,
        "train_images_per_s": _images_per_s(det.history_),
        "typed_by": ("lesion embedder" if after_head is not None else "class head"),
        "before_typed_by": ("lesion embedder" if before_head is not None else "class head"),
    }
    if after_head is not None:
        ft["after_class_head"] = result_metrics(after_head)
    if before_head is not None:
        ft["before_class_head"] = result_metrics(before_head)
    if before.class_aware is not None and after.class_aware is not None:
        # what corrected labels change: the class a detection names (class-aware FROC)
        ft["class_aware_difference"] = paired_difference(
            after.class_aware.curve, before.class_aware.curve, n_boot=N_BOOT).to_metrics()
    # replaced whole: keys of an earlier fine-tuning (its class head, class-aware figures) go
    run.update_metrics({"finetune": ft, "detection": {name: ft["after"]}},
                       replace=[("finetune",), ("detection", name)])
    out(results_table({"before": before, "after": after}))
    out(f"after - before, mean 0.5-4 FP: {diff.format()} (95 % paired bootstrap over the "
        f"{after.n_images} key slices; after not better in {diff.p_le_zero[MEAN_KEY]:.0%} of "
        "resamples)")
    return ft


def _type_base_predictions(
    run: RunDir,
    folder: Path,
    lineage: Mapping[str, Any],
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    train_ids: set[str],
    *,
    threads: int = 1,
) -> tuple[pd.DataFrame, str] | None:
    """The base model's detections named by the lesion embedder from the base model's own
    training labels: its ``typer.parquet`` when it has one, else the run's pseudo-labels when
    they are the labels it was trained on (same content hash as its lineage). ``None`` when
    neither holds (the labels it was trained on are not known here)."""
    from .labels_table import labels_from_pseudo, labels_hash
    from .typer import fit_run_typer, type_model_predictions, type_with

    if (folder / "typer.parquet").is_file():
        typed, _ = type_model_predictions(run, folder, predictions, manifest, threads=threads)
        return typed, f"{folder.name}/typer.parquet"
    if not run.pseudo_labels.is_file() or not lineage.get("labels_hash"):
        return None
    table = labels_from_pseudo(run.load_pseudo_labels(), str(run.pseudo_labels))
    if labels_hash(table) != lineage["labels_hash"]:
        return None
    typed_by = table[table["lesion_id"].astype(str).isin(train_ids)]
    loaded = fit_run_typer(run, typed_by, n_neighbors=TYPER_NEIGHBORS, rescore=TYPER_RESCORE,
                           source=str(run.pseudo_labels))
    typed = type_with(*loaded, predictions, manifest, threads=threads)
    return typed, f"the run's pseudo-labels, {len(typed_by)} lesions"


def result_metrics(result: FROCResult) -> dict:
    """``result.to_metrics()`` with 95 % bootstrap intervals (``interval95``), also of its
    class-aware evaluation (``class_aware.interval95``) when it has one."""
    entry = {**result.to_metrics(), "interval95": interval_metrics(result)}
    if result.class_aware is not None:
        entry["class_aware"]["interval95"] = interval_metrics(result.class_aware)
    return entry


def interval_metrics(result: FROCResult) -> dict:
    """95 % bootstrap intervals of a result's sensitivities, JSON-able.

    ``evaluate_predictions`` refuses a split without lesions, so every result has some.
    """
    return bootstrap_sensitivity(result.curve, n_boot=N_BOOT).to_metrics()


def _images_per_s(history: list[dict]) -> float | None:
    secs = sum(h.get("seconds", 0.0) for h in history)
    n = sum(h.get("images", 0) for h in history)
    return n / secs if secs else None

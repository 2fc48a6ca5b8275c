"""A run directory: everything one pipeline run makes, in one folder.

Layout (each step owns its files; all writes are atomic)::

    RUN_DIR/
      run.json               manifest path, truth path (optional), created, versions
      embedder.pt            embedding network checkpoint; embedder.json its config record
      embeddings.parquet     lesion_id + float32 columns e0..e{d-1}
      pseudo_labels.parquet  lesion_id, cluster (int), label (taxonomy name), confidence (0-1)
      umap.parquet           lesion_id, x, y
      metrics.json           every evaluation's numbers, nested by step
      labels.sqlite          the label store (corrections, history, snapshots)
      cache/                 what a step may rebuild: patches/ (lesion patches), umap/ (maps by
                             embedding hash), embeddings/ (chunks of an interrupted extraction)
      jobs/                  background jobs: <name>.json record, <name>.log, <name>.lock
      exports/               label exports made from the notebooks and the dashboard
      report.html            ``deeplesion-lab report``
      detector/              detector checkpoints and predictions:
        <model>/model.pt                   one folder per trained model (single, pseudo, ...-ft1)
        predictions_<model>_<split>.csv    ``detect`` of a model on a split (``all``: every key
                                           slice); the pipeline writes single/pseudo on ``test``
                                           and pseudo on ``all`` (the lesion graph's detections)
        <model>/predictions_<split>.csv    a fine-tuned model on its evaluation split (and
                                           ``predictions_before_<split>.csv``: its parent's)
      graph/                 lesion graph (nodes.parquet, edges.parquet), pairs.parquet,
                             tracks.parquet, proposals.parquet, detections.csv, graph.json

Every path is a property or method of :class:`RunDir`; steps, commands, widgets and notebooks
ask it rather than spelling a name out.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import update_json, write_json, write_parquet
from .errors import LabError

__all__ = ["RunDir", "RunError", "versions"]

#: ``detect --split all`` of runs made before the per-model name (read, never written).
LEGACY_PREDICTIONS_ALL = "predictions_all.csv"


class RunError(LabError, ValueError):
    """A run directory is missing something a step needs."""


def versions() -> dict[str, str]:
    """Versions of Python and the main libraries, for config records."""
    out = {"python": platform.python_version()}
    for mod in ("deeplesion_lab", "numpy", "pandas", "torch", "torchvision", "sklearn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional modules
            pass
    return out


class RunDir:
    """Paths and small readers for a run directory.

    Parameters
    ----------
    path : str or pathlib.Path
        The folder (created by :meth:`init`).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths -----------------------------------------------------------------------------------
    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def embeddings(self) -> Path:
        return self.path / "embeddings.parquet"

    @property
    def pseudo_labels(self) -> Path:
        return self.path / "pseudo_labels.parquet"

    @property
    def umap(self) -> Path:
        return self.path / "umap.parquet"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def label_db(self) -> Path:
        return self.path / "labels.sqlite"

    @property
    def detector_dir(self) -> Path:
        return self.path / "detector"

    @property
    def graph_dir(self) -> Path:
        return self.path / "graph"

    @property
    def embedder(self) -> Path:
        """``embedder.pt``: the embedding network (``embed`` writes it, ``embedder.json`` beside)."""
        return self.path / "embedder.pt"

    @property
    def cache_dir(self) -> Path:
        """``cache/``: what the steps may rebuild (safe to delete)."""
        return self.path / "cache"

    @property
    def patch_cache(self) -> Path:
        """``cache/patches``: lesion patches cut from the slices (``embed``, ``mine``, ``evaluate``)."""
        return self.cache_dir / "patches"

    @property
    def umap_cache(self) -> Path:
        """``cache/umap``: 2-D maps by embedding hash (``mine``)."""
        return self.cache_dir / "umap"

    @property
    def embedding_chunks(self) -> Path:
        """``cache/embeddings``: chunks of an interrupted embedding extraction (``embed``)."""
        return self.cache_dir / "embeddings"

    @property
    def jobs_dir(self) -> Path:
        """``jobs/``: background jobs' records, logs and locks (:mod:`deeplesion_lab.jobs`)."""
        return self.path / "jobs"

    @property
    def exports_dir(self) -> Path:
        """``exports/``: label exports made from the notebooks and the dashboard."""
        return self.path / "exports"

    @property
    def report(self) -> Path:
        """``report.html`` (``deeplesion-lab report``)."""
        return self.path / "report.html"

    # the lesion graph's files (``graph``) --------------------------------------------------------
    @property
    def graph_pairs(self) -> Path:
        return self.graph_dir / "pairs.parquet"

    @property
    def graph_tracks(self) -> Path:
        return self.graph_dir / "tracks.parquet"

    @property
    def graph_proposals(self) -> Path:
        """``graph/proposals.parquet``: possibly unannotated lesions found by ``graph``."""
        return self.graph_dir / "proposals.parquet"

    @property
    def graph_detections(self) -> Path:
        """``graph/detections.csv``: the detections ``graph`` ran next to key slices."""
        return self.graph_dir / "detections.csv"

    @property
    def graph_record(self) -> Path:
        """``graph/graph.json``: the graph's settings, matcher and counts."""
        return self.graph_dir / "graph.json"

    # detector predictions: the one place that names them (pipeline, finetune, widgets) ---------
    def predictions_file(self, model: str, split: str = "test") -> Path:
        """``detector/predictions_<model>_<split>.csv``: ``detect`` of one model on one split."""
        return self.detector_dir / f"predictions_{model}_{split}.csv"

    def model_predictions_file(self, model: str, split: str = "test", before: bool = False) -> Path:
        """``detector/<model>/predictions_<split>.csv`` written by ``finetune`` for the new model
        (``before``: ``predictions_before_<split>.csv``, its parent's on the same slices)."""
        name = f"predictions_before_{split}.csv" if before else f"predictions_{split}.csv"
        return self.detector_dir / model / name

    def prediction_files(self) -> dict[str, list[tuple[str, Path]]]:
        """Every prediction table of the run, by model: ``{model: [(split, path), ...]}``.

        Models are the folders of ``detector/`` with a ``model.pt`` or prediction tables (in
        creation order) plus any model named by a ``predictions_<model>_<split>.csv``; a legacy
        ``predictions_all.csv`` appears as model ``"all"``. The tables of each model are listed widest split first
        (``all`` before ``test``/``val``/``train``). A fine-tuned model's "before" table is its
        parent's and is not listed.
        """
        det = self.detector_dir
        out: dict[str, list[tuple[str, Path]]] = {}
        if not det.is_dir():
            return out
        folders = {p.parent for p in det.glob("*/model.pt")}
        folders |= {p.parent for p in det.glob("*/predictions_*.csv")}
        models = sorted(folders, key=lambda p: (p.stat().st_mtime, p.name))
        for folder in models:
            out.setdefault(folder.name, [])
        for p in sorted(det.glob("predictions_*_*.csv")):
            model, _, split = p.stem[len("predictions_"):].rpartition("_")
            if model:
                out.setdefault(model, []).append((split, p))
        for folder in models:
            for p in sorted(folder.glob("predictions_*.csv")):
                split = p.stem[len("predictions_"):]
                if not split.startswith("before_"):
                    out[folder.name].append((split, p))
        legacy = det / LEGACY_PREDICTIONS_ALL
        if legacy.is_file():
            out.setdefault("all", []).append(("all", legacy))
        order = {"all": 0, "test": 1, "val": 2, "train": 3}
        return {
            m: sorted(v, key=lambda sp: (order.get(sp[0], 9), sp[0]))
            for m, v in out.items() if v
        }

    # run.json --------------------------------------------------------------------------------
    def init(self, manifest: str | Path, truth: str | Path | None = None) -> RunDir:
        """Create the folder and ``run.json`` (or check an existing one uses the same manifest)."""
        manifest = Path(manifest).resolve()
        if not manifest.is_file():
            raise RunError(f"{manifest}: manifest not found")
        self.path.mkdir(parents=True, exist_ok=True)
        if self.run_json.exists():
            info = self.info()
            if Path(info["manifest"]) != manifest:
                raise RunError(
                    f"{self.run_json}: this run was made from {info['manifest']}, not {manifest}; "
                    "use another --run folder"
                )
            if truth is not None:
                update_json(self.run_json, {"truth": str(Path(truth).resolve())})
            return self
        write_json(
            {
                "manifest": str(manifest),
                "truth": str(Path(truth).resolve()) if truth is not None else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": versions(),
            },
            self.run_json,
        )
        return self

    def info(self) -> dict:
        """The contents of ``run.json``."""
        if not self.run_json.is_file():
            raise RunError(
                f"{self.path} is not a run directory (no run.json); start one with "
                "`deeplesion-lab embed MANIFEST --run DIR`"
            )
        return json.loads(self.run_json.read_text())

    def manifest_path(self) -> Path:
        return Path(self.info()["manifest"])

    def truth_path(self) -> Path | None:
        t = self.info().get("truth")
        return Path(t) if t else None

    def load_manifest(self, all_rows: bool = False) -> pd.DataFrame:
        """The run's manifest (see :func:`deeplesion_lab.manifest.read_manifest`).

        A run made on a partial download (``embed --present-only``, recorded in ``run.json``,
        or a manifest written with ``--require-images``) gets only the lesions whose key slice
        is present, so that every later step (mining, evaluation, the detector, the label store)
        leaves the others out; ``attrs`` then carry ``images_used`` and ``images_of``.
        ``all_rows`` gives every row of the manifest file.
        """
        from .availability import PRESENT_ONLY, run_uses_present_only, select_present
        from .manifest import read_manifest

        df = read_manifest(self.manifest_path())
        if all_rows:
            return df
        if run_uses_present_only(self.info()) or df.attrs.get("images_policy") == PRESENT_ONLY:
            df, _ = select_present(df, present_only=True)
        return df

    # embeddings ------------------------------------------------------------------------------
    def save_embeddings(self, lesion_ids, vectors: np.ndarray, metadata: dict | None = None) -> Path:
        """Write ``embeddings.parquet``: ``lesion_id`` + ``e0..e{d-1}`` (float32)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        df = pd.DataFrame(vectors, columns=[f"e{i}" for i in range(vectors.shape[1])])
        df.insert(0, "lesion_id", pd.array(list(lesion_ids), dtype="string"))
        return write_parquet(df, self.embeddings, metadata)

    def load_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lesion_ids, vectors)`` from ``embeddings.parquet``."""
        if not self.embeddings.is_file():
            raise RunError(
                f"{self.embeddings} not found; run `deeplesion-lab embed MANIFEST --run {self.path}`"
            )
        df = pd.read_parquet(self.embeddings)
        cols = [c for c in df.columns if c != "lesion_id"]
        return df["lesion_id"].to_numpy(dtype=object), df[cols].to_numpy(dtype=np.float32)

    def load_pseudo_labels(self) -> pd.DataFrame:
        """``pseudo_labels.parquet`` (lesion_id, cluster, label, confidence)."""
        if not self.pseudo_labels.is_file():
            raise RunError(
                f"{self.pseudo_labels} not found; run `deeplesion-lab mine --run {self.path}`"
            )
        return pd.read_parquet(self.pseudo_labels)

    def load_metrics(self) -> dict:
        """``metrics.json`` as a dict (empty when no step has written it yet).

        Raises
        ------
        RunError
            When the file is not a JSON object (named, with the line of the error).
        """
        try:
            text = self.metrics.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunError(
                f"{self.metrics}: line {exc.lineno}: not valid JSON ({exc.msg}); restore it or "
                "delete it and rerun the evaluations"
            ) from None
        if not isinstance(data, dict):
            raise RunError(f"{self.metrics}: expected a JSON object, got {type(data).__name__}")
        return data

    def update_metrics(self, updates: dict, *, replace: Iterable[tuple[str, ...]] = ()) -> dict:
        """Deep-merge ``updates`` into ``metrics.json`` (``replace``: key paths whose new value
        replaces the old whole, see :func:`~deeplesion_lab.atomic.update_json`)."""
        return update_json(self.metrics, updates, replace=replace)

"""Lesion patches from a manifest: context slices (or several windows) as channels, cropped
around the box, cached as ``uint8`` arrays in memory and in ``.npz`` chunks on disk.

Building the patches of 32,735 lesions reads three slices per lesion, which takes minutes; the
chunked cache makes it resumable (an interrupted build keeps its finished chunks) and makes every
later step (training, extraction, mining, evaluation) start in seconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import LabError
from ..images import WINDOW_PRESETS, ImageError, apply_window, crop_patch, window_bounds
from ..transforms import LoadContext, sample_from_row

__all__ = [
    "PatchConfig",
    "PatchSet",
    "LesionPatchDataset",
    "build_patches",
    "context_summary",
    "lesion_meta",
]

#: Windows used as channels in ``channels="windows"`` mode.
MULTI_WINDOWS = ("lung", "soft tissue", "bone")


@dataclass(frozen=True)
class PatchConfig:
    """How a lesion patch is made.

    Parameters
    ----------
    size : int, default 64
        Output side in pixels.
    channels : {"context", "windows"}, default "context"
        ``"context"``: ``n_slices`` neighbouring slices ``slice_mm`` apart, one window.
        ``"windows"``: the key slice in the lung, soft-tissue and bone windows.
    n_slices : int, default 3
        Context slices (odd) in ``"context"`` mode.
    slice_mm : float, default 2.0
        Interval between context slices.
    window : str, default "wide"
        Window preset for ``"context"`` mode (see :data:`deeplesion_lab.images.WINDOW_PRESETS`).
    margin : float, default 0.5
        Context around the box as a fraction of its longer side (the box is the central half).
    min_fov_mm : float, default 0
        Smallest side of the crop in mm, so that small lesions keep some surrounding anatomy
        (0: at least 16 pixels, as :func:`deeplesion_lab.images.crop_patch` does).
    context_mm : float, default 0
        Side in mm of a second crop of the key slice at a fixed physical size, centred on the
        lesion, in the lung, soft-tissue and bone windows (:attr:`PatchSet.context`): the tissue
        the lesion sits in, whatever its size. 0: no context crop.
    context_size : int, default 32
        Side in pixels of the context crop.
    """

    size: int = 64
    channels: str = "context"
    n_slices: int = 3
    slice_mm: float = 2.0
    window: str = "wide"
    margin: float = 0.5
    min_fov_mm: float = 0.0
    context_mm: float = 0.0
    context_size: int = 32

    def __post_init__(self):
        if self.channels not in ("context", "windows"):
            raise LabError(f"patch channels must be 'context' or 'windows', got {self.channels!r}")
        if self.n_slices < 1 or self.n_slices % 2 == 0:
            raise LabError(f"n_slices must be a positive odd number, got {self.n_slices}")
        if self.size < 16:
            raise LabError(f"patch size must be at least 16 pixels, got {self.size}")
        if self.window.replace("_", " ").lower() not in WINDOW_PRESETS:
            raise LabError(f"unknown window {self.window!r}; known: {', '.join(WINDOW_PRESETS)}")
        if self.context_mm < 0:
            raise LabError(f"context_mm must be >= 0 (0: no context crop), got {self.context_mm}")
        if self.context_mm and self.context_size < 8:
            raise LabError(f"context_size must be at least 8 pixels, got {self.context_size}")

    @property
    def context_channels(self) -> int:
        """Channels of the context crop (0 without one)."""
        return len(MULTI_WINDOWS) if self.context_mm else 0

    @property
    def in_channels(self) -> int:
        return self.n_slices if self.channels == "context" else len(MULTI_WINDOWS)

    def key(self) -> str:
        """A short hash of the settings (names cache files)."""
        d = dict(self.__dict__)
        if not self.context_mm:  # patches cached before the context crop keep their names
            d.pop("context_mm")
            d.pop("context_size")
        text = json.dumps(d, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass
class PatchSet:
    """Patches and the per-lesion metadata the embedder and the sampler need.

    Attributes
    ----------
    lesion_ids : (N,) object array
    patches : (N, C, S, S) uint8 array, windowed intensities 0-255
    boxes : (N, 4) float32 array, the lesion box in patch pixels
    locations : (N, 3) float64 array, normalised x, y, z
    sizes_mm : (N,) float64 array, long diameter in mm
    types : (N,) int64 array, coarse type code, -1 unknown
    patients : (N,) int64 array
    missing_context : (N,) int16 array or None
        Context slices of each lesion that were missing on disk and stood in for by the nearest
        present slice (-1: not known, a patch cached before this was counted).
    context : (N, 3, T, T) uint8 array or None
        The fixed-size context crops (``config.context_mm``), None without them.
    """

    lesion_ids: np.ndarray
    patches: np.ndarray
    boxes: np.ndarray
    locations: np.ndarray
    sizes_mm: np.ndarray
    types: np.ndarray
    patients: np.ndarray
    config: PatchConfig = field(default_factory=PatchConfig)
    missing_context: np.ndarray | None = None
    context: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lesion_ids)

    def subset(self, index: np.ndarray | Sequence[int]) -> PatchSet:
        """The lesions at ``index`` (positions or a boolean mask)."""
        idx = np.asarray(index)
        return PatchSet(
            self.lesion_ids[idx], self.patches[idx], self.boxes[idx], self.locations[idx],
            self.sizes_mm[idx], self.types[idx], self.patients[idx], self.config,
            None if self.missing_context is None else self.missing_context[idx],
            None if self.context is None else self.context[idx],
        )

    def with_types(self, types: np.ndarray) -> PatchSet:
        """A copy sharing the arrays, with other type codes (e.g. seeds only, pseudo-labels)."""
        t = np.asarray(types, dtype=np.int64)
        if t.shape != self.types.shape:
            raise LabError(f"types has shape {t.shape}, expected {self.types.shape}")
        return PatchSet(
            self.lesion_ids, self.patches, self.boxes, self.locations, self.sizes_mm, t,
            self.patients, self.config, self.missing_context, self.context,
        )


def lesion_meta(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """Locations, sizes (mm), types and patients of a manifest, checked for NaN."""
    loc = manifest[["location_x", "location_y", "location_z"]].to_numpy(dtype=np.float64)
    size = manifest["long_diameter_px"].to_numpy(dtype=np.float64) * manifest[
        "spacing_x"
    ].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(loc).all(1) & np.isfinite(size))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabError(
            f"lesion {manifest['lesion_id'].iloc[i]}: location or size is NaN "
            f"({int(bad.sum())} lesions affected)"
        )
    return {
        "lesion_ids": manifest["lesion_id"].astype(str).to_numpy(dtype=object),
        "locations": loc,
        "sizes_mm": size,
        "types": manifest["coarse_type"].to_numpy(dtype=np.int64),
        "patients": manifest["patient_index"].to_numpy(dtype=np.int64),
    }


def _min_side_px(config: PatchConfig, spacing_mm: float) -> float:
    return max(16.0, config.min_fov_mm / max(float(spacing_mm), 1e-6))


def _patch_box(box: Sequence[float], margin: float, size: int, min_side: float = 16.0) -> np.ndarray:
    """Where :func:`deeplesion_lab.images.crop_patch` puts the box inside the patch."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin), min_side)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    a0, b0 = np.floor(cx - side / 2), np.floor(cy - side / 2)
    scale = size / np.ceil(side)
    out = np.array([(x1 - a0) * scale, (y1 - b0) * scale, (x2 - a0) * scale, (y2 - b0) * scale])
    return np.clip(out, 0, size).astype(np.float32)


class LesionPatchDataset:
    """A map-style dataset (usable with ``torch.utils.data.DataLoader``) of lesion patches read
    from the slices (:class:`deeplesion_lab.transforms.LoadContext`, then
    :func:`deeplesion_lab.images.crop_patch` in HU and the window(s)).

    Items are ``(uint8 patch (C, S, S), box (4,) float32, missing context slices (int),
    uint8 context crop (3, T, T) or None)``:
    a neighbour slice missing on disk is replaced by the nearest present one, as
    :func:`deeplesion_lab.images.load_context` does, and counted instead of warned about.
    """

    def __init__(self, manifest: pd.DataFrame, images_root: str | Path, config: PatchConfig):
        self.rows = manifest.reset_index(drop=True)
        self.images_root = Path(images_root)
        self.config = config
        c = config
        if c.channels == "context":
            self.load = LoadContext(self.images_root, c.n_slices, c.slice_mm)
            self.windows = [window_bounds(c.window)]
        else:
            self.load = LoadContext(self.images_root, 1, None)
            self.windows = [window_bounds(w) for w in MULTI_WINDOWS]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
        row = self.rows.iloc[int(i)].to_dict()
        c = self.config
        try:
            sample = self.load(sample_from_row(row))
        except ImageError as exc:
            raise ImageError(f"lesion {row['lesion_id']}: {exc}") from exc
        box = sample["boxes"][0]
        min_side = _min_side_px(c, row["spacing_x"])
        hu = crop_patch(sample["image"], box, margin=c.margin, min_size=min_side,
                        out_size=c.size, fill=-1024.0)
        if c.channels == "windows":
            img = np.stack([apply_window(hu[0], w, dtype=np.float32) for w in self.windows])
        else:
            img = apply_window(hu, self.windows[0], dtype=np.float32)
        patch = (img * 255.0 + 0.5).astype(np.uint8)
        n_missing = len(sample.get("substituted_slices", ()))
        ctx = None
        if c.context_mm:
            key = sample["image"][sample["image"].shape[0] // 2]
            side = c.context_mm / max(float(row["spacing_x"]), 1e-6)
            cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
            square = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            hu = crop_patch(key, square, margin=0.0, min_size=side, out_size=c.context_size,
                            fill=-1024.0)
            ctx = (np.stack([apply_window(hu, window_bounds(w), dtype=np.float32)
                             for w in MULTI_WINDOWS]) * 255.0 + 0.5).astype(np.uint8)
        return patch, _patch_box(box, c.margin, c.size, min_side), n_missing, ctx


def _collate(batch):
    return (np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch]),
            np.array([b[2] for b in batch], dtype=np.int16),
            None if batch[0][3] is None else np.stack([b[3] for b in batch]))


def context_summary(patches: PatchSet) -> str | None:
    """One line on the context slices that were missing on disk (None: none was), e.g.
    ``context slices: 17 of 18 lesions lacked 34 neighbour slices; the nearest present slice
    stood in``."""
    m = patches.missing_context
    if m is None or patches.config.channels != "context":
        return None
    known = m >= 0
    short = m > 0
    if not short.any():
        return None
    unknown = int((~known).sum())
    extra = f" ({unknown} cached patches not counted)" if unknown else ""
    return (f"context slices: {int(short.sum()):,} of {len(m):,} lesions lacked "
            f"{int(m[short].sum()):,} neighbour slice{'s' if m[short].sum() != 1 else ''} on "
            f"disk; the nearest present slice of the series stood in{extra}")


def build_patches(
    manifest: pd.DataFrame,
    config: PatchConfig | None = None,
    *,
    images_root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    chunk_size: int = 512,
    num_workers: int = 0,
    progress: bool = False,
) -> PatchSet:
    """Make (or load from the cache) the patches of every lesion of ``manifest``.

    Parameters
    ----------
    manifest : pandas.DataFrame
        A manifest (:func:`deeplesion_lab.manifest.read_manifest`); every lesion must have its
        key slice on disk.
    config : PatchConfig, optional
    images_root : path, optional
        Defaults to the manifest's ``images_root``.
    cache_dir : path, optional
        Folder of ``.npz`` chunks; finished chunks are reused, so an interrupted build resumes.
    chunk_size : int, default 512
    num_workers : int, default 0
        DataLoader workers reading slices.
    progress : bool, default False
        Show a progress bar.

    Raises
    ------
    LabError
        Empty manifest, no images folder, lesions without a key slice on disk, NaN metadata.
    """
    import torch
    from tqdm.auto import tqdm

    from ..atomic import atomic_path
    from ..manifest import manifest_images_root

    config = config or PatchConfig()
    if len(manifest) == 0:
        raise LabError("the manifest has no lesions; nothing to embed")
    meta = lesion_meta(manifest)
    root = Path(images_root) if images_root is not None else manifest_images_root(manifest)
    if "has_image" in manifest.columns and not manifest["has_image"].all():
        from ..availability import select_present

        select_present(manifest, step="building patches")  # raises the counted message
        absent = manifest.loc[~manifest["has_image"].astype(bool), "lesion_id"]
        raise LabError(
            f"{len(absent)} lesion(s) have no key slice under {root} (e.g. {absent.iloc[0]}); "
            "embedding needs the images: pass the present ones only "
            "(deeplesion_lab.availability.select_present)"
        )
    n = len(manifest)
    patches = np.empty((n, config.in_channels, config.size, config.size), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.float32)
    missing = np.full(n, -1, dtype=np.int16)
    ct = config.context_size
    context = (np.empty((n, config.context_channels, ct, ct), dtype=np.uint8)
               if config.context_mm else None)
    cache = Path(cache_dir) if cache_dir is not None else None
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    todo = []
    for s, e in chunks:
        f = _chunk_file(cache, manifest.iloc[s:e], config) if cache else None
        if f is not None and f.is_file():
            with np.load(f) as z:
                patches[s:e], boxes[s:e] = z["patches"], z["boxes"]
                if "missing_context" in z.files:
                    missing[s:e] = z["missing_context"]
                if context is not None:
                    context[s:e] = z["context"]
        else:
            todo.append((s, e, f))
    if todo:
        bar = tqdm(total=sum(e - s for s, e, _ in todo), desc="patches", unit="lesion",
                   disable=not progress)
        for s, e, f in todo:
            ds = LesionPatchDataset(manifest.iloc[s:e], root, config)
            loader = torch.utils.data.DataLoader(
                ds, batch_size=64, shuffle=False, num_workers=num_workers, collate_fn=_collate
            )
            pos = s
            for p, b, m, cx in loader:
                patches[pos : pos + len(p)], boxes[pos : pos + len(p)] = p, b
                missing[pos : pos + len(p)] = m
                if context is not None:
                    context[pos : pos + len(p)] = cx
                pos += len(p)
                bar.update(len(p))
            if f is not None:
                with atomic_path(f) as tmp:
                    with open(tmp, "wb") as fh:
                        extra = {} if context is None else {"context": context[s:e]}
                        np.savez(fh, patches=patches[s:e], boxes=boxes[s:e],
                                 missing_context=missing[s:e], **extra)
        bar.close()
    return PatchSet(patches=patches, boxes=boxes, config=config, missing_context=missing,
                    context=context, **meta)


def _chunk_file(cache: Path, rows: pd.DataFrame, config: PatchConfig) -> Path:
    cols = ["lesion_id", "file_name", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"]
    h = hashlib.sha1(pd.util.hash_pandas_object(rows[cols], index=False).to_numpy().tobytes())
    return cache / f"patches-{config.key()}-{h.hexdigest()[:16]}.npz"

"""A lesion's sub-volume: the slices of its series around the key slice as one 3-D HU array.

DeepLesion ships, for every key image, the neighbouring slices of its series (``Slice_range``,
1-5 mm apart). :func:`load_subvolume` stacks them into a ``(z, y, x)`` int16 array with its
spacing in mm (x, y from ``Spacing_mm_px_``, z from the slice interval) and places the key
slice's box and RECIST line in volume coordinates; :func:`resample_isotropic` resamples it to
cubic voxels on request. Slices are read with :func:`deeplesion_lab.images.load_hu`.

Coordinates are voxel centres: voxel ``(k, j, i)`` is at ``(z, y, x) = (k, j, i)`` in volume
coordinates and at ``(k * sz, j * sy, i * sx)`` mm from the first voxel. ``x, y`` are
DeepLesion's pixel coordinates unchanged; ``z = 0`` is the first slice of the volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import LabError
from .images import load_hu, series_dir, slice_path

__all__ = [
    "VolumeError",
    "SubVolume",
    "load_subvolume",
    "lesion_subvolume",
    "resample_isotropic",
    "format_indices",
]


class VolumeError(LabError, ValueError):
    """A sub-volume cannot be built: slices missing, of mixed sizes, or a bad row."""


def format_indices(indices) -> str:
    """Slice indices as compact ranges: ``[1, 2, 3, 7]`` -> ``"001-003, 007"``."""
    idx = sorted(int(i) for i in indices)
    parts: list[str] = []
    k = 0
    while k < len(idx):
        j = k
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(f"{idx[k]:03d}" if j == k else f"{idx[k]:03d}-{idx[j]:03d}")
        k = j + 1
    return ", ".join(parts)


@dataclass(frozen=True)
class SubVolume:
    """A lesion's sub-volume with its key-slice annotation in volume coordinates.

    Attributes
    ----------
    hu : numpy.ndarray
        ``int16`` Hounsfield units, shape ``(nz, ny, nx)``, C-contiguous.
    spacing : (float, float, float)
        Voxel size ``(sz, sy, sx)`` in mm.
    slice_positions : numpy.ndarray
        ``float64`` ``(nz,)``: the series slice index each plane lies at (whole numbers unless
        resampled along z).
    key_z : float
        The key slice's plane in volume coordinates.
    box : numpy.ndarray
        ``(x1, y1, x2, y2)`` of the lesion's box on plane ``key_z`` (volume voxels).
    recist : numpy.ndarray
        ``(4, 3)`` RECIST end points as ``(x, y, z)`` voxels: long axis, then short axis.
    folder : pathlib.Path
        The series folder the slices came from.
    lesion_id : str
        The lesion (manifest ``lesion_id``, or the file name when the row has none).
    slice_range : (int, int)
        The row's ``Slice_range`` (the sub-volume DeepLesion released for this key image).
    missing : tuple of int
        Slices of ``slice_range`` not on disk (only with ``missing="crop"``).
    left_out : tuple of int
        Slices of ``slice_range`` on disk but beyond a missing one, so not in the volume (only
        with ``missing="crop"``).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    slice_positions: np.ndarray
    key_z: float
    box: np.ndarray
    recist: np.ndarray
    folder: Path
    lesion_id: str = ""
    slice_range: tuple[int, int] = (0, 0)
    missing: tuple[int, ...] = field(default=())
    left_out: tuple[int, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(nz, ny, nx)``."""
        return tuple(int(v) for v in self.hu.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Distance between the first and the last voxel centre along ``(z, y, x)`` in mm."""
        return tuple(float((n - 1) * s) for n, s in zip(self.shape, self.spacing, strict=True))  # type: ignore[return-value]

    @property
    def key_slice(self) -> np.ndarray:
        """The plane at ``key_z`` (nearest plane when resampled off the grid)."""
        return self.hu[int(round(self.key_z))]

    def box_mask(self, value: int = 1) -> np.ndarray:
        """A ``uint8`` label image: the box filled with ``value`` on the key plane, 0 elsewhere."""
        mask = np.zeros(self.shape, dtype=np.uint8)
        x1, y1, x2, y2 = self.box
        nz, ny, nx = self.shape
        i0, i1 = max(int(np.ceil(x1)), 0), min(int(np.floor(x2)), nx - 1)
        j0, j1 = max(int(np.ceil(y1)), 0), min(int(np.floor(y2)), ny - 1)
        if i1 >= i0 and j1 >= j0:
            mask[int(round(self.key_z)), j0 : j1 + 1, i0 : i1 + 1] = value
        return mask

    def to_mm(self, points_zyx) -> np.ndarray:
        """Volume coordinates ``(..., 3)`` as ``(z, y, x)`` to mm from the first voxel."""
        return np.asarray(points_zyx, dtype=np.float64) * np.asarray(self.spacing)


def _get(row: Mapping | object, key: str):
    try:
        return row[key] if isinstance(row, Mapping) or hasattr(row, "__getitem__") else getattr(row, key)
    except (KeyError, IndexError, AttributeError):
        raise VolumeError(f"the lesion row has no {key!r} field") from None


def _read_slices(paths: list[Path], n_jobs: int) -> list[np.ndarray]:
    if n_jobs <= 1 or len(paths) < 4:
        return [load_hu(p) for p in paths]
    with ThreadPoolExecutor(max_workers=n_jobs) as pool:  # PNG decoding releases the GIL
        return list(pool.map(load_hu, paths))


def load_subvolume(
    root: str | Path,
    row: Mapping | object,
    *,
    missing: Literal["error", "crop"] = "error",
    isotropic: bool | float = False,
    n_jobs: int = 4,
) -> SubVolume:
    """Stack a lesion's slices (its row's ``Slice_range``) into a 3-D HU array.

    Parameters
    ----------
    root : str or pathlib.Path
        The ``Images_png`` folder.
    row : mapping or row-like
        A manifest row (``file_name``, ``key_slice_index``, ``slice_start``, ``slice_end``,
        ``spacing_x``, ``spacing_y``, ``spacing_z``, ``image_height``, ``image_width``,
        ``bbox_x1..bbox_y2``, ``recist_x1..recist_y4``; ``lesion_id`` when present).
    missing : {"error", "crop"}, default "error"
        What to do when slices of the range are not on disk: ``"error"`` raises
        :class:`VolumeError` naming the folder and the missing slices; ``"crop"`` keeps the
        contiguous run of present slices around the key slice and lists the others in
        :attr:`SubVolume.missing` and :attr:`SubVolume.left_out` (nothing is left out unsaid).
    isotropic : bool or float, default False
        Resample to cubic voxels: ``True`` at the finest of the three spacings, a number at that
        many mm (see :func:`resample_isotropic`).
    n_jobs : int, default 4
        Threads decoding the PNGs.

    Returns
    -------
    SubVolume

    Raises
    ------
    VolumeError
        Key slice or range slices missing, slices of mixed sizes or not of ``Image_size``, or a
        bad row. (:class:`deeplesion_lab.images.ImageError` for a corrupt file, naming it.)
    """
    if missing not in ("error", "crop"):
        raise ValueError(f"missing must be 'error' or 'crop', got {missing!r}")
    file_name = str(_get(row, "file_name"))
    lesion_id = str(_get(row, "lesion_id")) if _has(row, "lesion_id") else file_name
    key = int(_get(row, "key_slice_index"))
    lo, hi = int(_get(row, "slice_start")), int(_get(row, "slice_end"))
    folder = series_dir(root, file_name)
    if not lo <= key <= hi:
        raise VolumeError(
            f"{lesion_id}: key slice {key:03d} lies outside its Slice_range {lo:03d}-{hi:03d}"
        )
    spacing = tuple(float(_get(row, k)) for k in ("spacing_z", "spacing_y", "spacing_x"))
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise VolumeError(f"{lesion_id}: spacing (z, y, x) {spacing} mm must be positive")
    if not folder.is_dir():
        raise VolumeError(f"{folder}: series folder not found (lesion {lesion_id})")
    present = [i for i in range(lo, hi + 1) if slice_path(root, file_name, i).is_file()]
    if key not in present:
        raise VolumeError(f"{folder}: key slice {key:03d}.png not found (lesion {lesion_id})")
    absent = sorted(set(range(lo, hi + 1)) - set(present))
    if absent and missing == "error":
        raise VolumeError(
            f"{folder}: {len(absent)} of {hi - lo + 1} slices of {lesion_id}'s range "
            f"{lo:03d}-{hi:03d} are missing ({format_indices(absent)}); "
            "pass missing='crop' to use the slices around the key slice that are on disk"
        )
    z0 = z1 = key
    have = set(present)
    while z0 - 1 in have:
        z0 -= 1
    while z1 + 1 in have:
        z1 += 1
    indices = list(range(z0, z1 + 1))
    slices = _read_slices([slice_path(root, file_name, i) for i in indices], n_jobs)
    want = (int(_get(row, "image_height")), int(_get(row, "image_width")))
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, s in zip(indices, slices, strict=True):
        shapes.setdefault(tuple(s.shape), []).append(i)
    if len(shapes) > 1 or want not in shapes:
        sizes = "; ".join(f"{h}x{w}: {format_indices(ix)}" for (h, w), ix in shapes.items())
        raise VolumeError(
            f"{folder}: slices of {'mixed sizes' if len(shapes) > 1 else 'another size'} "
            f"({sizes}) but Image_size says {want[0]}x{want[1]} (lesion {lesion_id})"
        )
    hu = np.stack(slices).astype(np.int16, copy=False)
    kz = float(key - z0)
    box = np.array([float(_get(row, f"bbox_{k}")) for k in ("x1", "y1", "x2", "y2")])
    rec = np.array([float(_get(row, f"recist_{a}{n}")) for n in range(1, 5) for a in "xy"])
    recist = np.column_stack([rec.reshape(4, 2), np.full(4, kz)])
    vol = SubVolume(
        hu=np.ascontiguousarray(hu),
        spacing=spacing,  # type: ignore[arg-type]
        slice_positions=np.asarray(indices, dtype=np.float64),
        key_z=kz,
        box=box,
        recist=recist,
        folder=folder,
        lesion_id=lesion_id,
        slice_range=(lo, hi),
        missing=tuple(absent),
        left_out=tuple(i for i in present if i < z0 or i > z1),
    )
    if isotropic is not False and isotropic is not None:
        vol = resample_isotropic(vol, None if isotropic is True else float(isotropic))
    return vol


def _has(row, key: str) -> bool:
    try:
        _get(row, key)
    except VolumeError:
        return False
    return True


def lesion_subvolume(manifest, lesion_id: str, images_root: str | Path | None = None,
                     **kwargs) -> SubVolume:
    """:func:`load_subvolume` for one lesion of a manifest (DataFrame from ``read_manifest``).

    ``images_root`` defaults to the manifest's ``images_root`` attribute.
    """
    root = images_root or manifest.attrs.get("images_root") or None
    if not root:
        raise VolumeError("the manifest has no images_root; pass images_root")
    hit = manifest.index[manifest["lesion_id"].astype(str) == str(lesion_id)]
    if not len(hit):
        raise VolumeError(f"unknown lesion id {lesion_id!r}")
    return load_subvolume(root, manifest.loc[hit[0]], **kwargs)


def _lerp_axis(a: np.ndarray, axis: int, pos: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``pos``, as int16.

    Done ``chunk`` output planes at a time, so memory stays near the int16 output.
    """
    n = a.shape[axis]
    pos = np.clip(np.asarray(pos, dtype=np.float64), 0.0, n - 1.0)
    shape = list(a.shape)
    shape[axis] = len(pos)
    out = np.empty(shape, dtype=np.int16)
    for s0 in range(0, len(pos), chunk):
        p = pos[s0 : s0 + chunk]
        i0 = np.floor(p).astype(np.int64)
        i1 = np.minimum(i0 + 1, n - 1)
        wshape = [1] * a.ndim
        wshape[axis] = len(p)
        w = (p - i0).astype(np.float32).reshape(wshape)
        lo = np.take(a, i0, axis=axis).astype(np.float32)
        lo += (np.take(a, i1, axis=axis).astype(np.float32) - lo) * w
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(s0, s0 + len(p))
        out[tuple(idx)] = np.rint(lo)
    return out


def resample_isotropic(vol: SubVolume, spacing_mm: float | None = None) -> SubVolume:
    """Resample a sub-volume to cubic voxels of ``spacing_mm`` (default: its finest spacing).

    Trilinear (separable) interpolation on voxel centres: the first voxel stays where it is,
    plane ``k`` of the result lies ``k * spacing_mm`` from it, and the box, RECIST points,
    ``key_z`` and ``slice_positions`` are mapped alike (``new = old * old_spacing /
    spacing_mm``). HU stay ``int16``, rounded after each resampled axis (at most 0.5 HU per
    axis), which keeps memory near the output's size.
    """
    t = float(min(vol.spacing) if spacing_mm is None else spacing_mm)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    out: np.ndarray = vol.hu
    factors = []
    for axis, s in enumerate(vol.spacing):
        f = s / t
        factors.append(f)
        n = out.shape[axis]
        m = int(np.floor((n - 1) * f + 1e-6)) + 1
        if m == n and abs(f - 1.0) < 1e-9:
            continue
        out = _lerp_axis(out, axis, np.arange(m) / f)
    hu = np.ascontiguousarray(out, dtype=np.int16)
    fz, fy, fx = factors
    box = vol.box * np.array([fx, fy, fx, fy])
    recist = vol.recist * np.array([fx, fy, fz])
    nz = hu.shape[0]
    pos = np.interp(np.arange(nz) / fz, np.arange(len(vol.slice_positions)), vol.slice_positions)
    return replace(vol, hu=hu, spacing=(t, t, t), slice_positions=pos, key_z=vol.key_z * fz,
                   box=box, recist=recist)

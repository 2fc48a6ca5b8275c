"""DeepLesion slices: paths, 16-bit PNG to Hounsfield units, windowing, context, crops.

DeepLesion stores each CT slice as a 16-bit grayscale PNG at
``Images_png/{patient}_{study}_{series}/{slice:03d}.png`` with ``HU = value - 32768``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import LabError

__all__ = [
    "HU_OFFSET",
    "WINDOW_PRESETS",
    "ImageError",
    "MissingSliceWarning",
    "series_dir",
    "slice_path",
    "key_slice_path",
    "read_png16",
    "load_hu",
    "window_bounds",
    "apply_window",
    "load_context",
    "missing_context_line",
    "resample_spacing",
    "crop_patch",
    "recist_to_box",
    "box_to_recist",
    "recist_diameters",
    "write_png16",
]

#: DeepLesion's PNG offset: ``HU = value - 32768``.
HU_OFFSET = 32768

#: Named windows as (level, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "liver": (60.0, 160.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
    # The single wide window the DeepLesion detectors feed their CNNs.
    "wide": (1023.5, 4095.0),
}


class ImageError(LabError, ValueError):
    """A slice file is missing, corrupt, of the wrong kind or of the wrong size."""


class MissingSliceWarning(UserWarning):
    """A neighbour slice is missing on disk; the nearest present slice stands in for it."""


def series_dir(root: str | Path, file_name: str) -> Path:
    """Folder of a key image's series: ``000001_01_01_109.png`` -> ``root/000001_01_01``."""
    stem = file_name[:-4] if file_name.endswith(".png") else file_name
    series, _, _ = stem.rpartition("_")
    return Path(root) / series


def slice_path(root: str | Path, file_name: str, slice_index: int) -> Path:
    """Path of slice ``slice_index`` of the series that ``file_name`` belongs to."""
    return series_dir(root, file_name) / f"{int(slice_index):03d}.png"


def key_slice_path(root: str | Path, file_name: str) -> Path:
    """Path of a key image: the last ``_`` of ``File_name`` becomes ``/``."""
    stem = file_name[:-4] if file_name.endswith(".png") else file_name
    series, _, index = stem.rpartition("_")
    return Path(root) / series / f"{index}.png"


def read_png16(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 16-bit grayscale PNG as ``uint16``.

    Parameters
    ----------
    path : str or pathlib.Path
        The PNG file.
    expected_size : (height, width), optional
        The size the row's ``Image_size`` promises; a mismatch is an error.

    Raises
    ------
    ImageError
        Missing or corrupt file, a PNG that is not 16-bit grayscale, or the wrong size.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: slice file not found")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise ImageError(f"{path}: not a PNG file (found {im.format})")
            mode = im.mode
            if mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise ImageError(
                    f"{path}: expected a 16-bit grayscale PNG (DeepLesion stores HU + 32768), "
                    f"found mode {mode!r}"
                    + (" (8-bit)" if mode in ("L", "P", "1") else "")
                    + (" (colour)" if mode in ("RGB", "RGBA", "LA") else "")
                )
            arr = np.asarray(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or unreadable PNG ({exc})") from exc
    if arr.dtype != np.uint16:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise ImageError(f"{path}: pixel values outside the 16-bit range")
        arr = arr.astype(np.uint16)
    if expected_size is not None and tuple(arr.shape) != tuple(int(v) for v in expected_size):
        raise ImageError(
            f"{path}: image is {arr.shape[0]}x{arr.shape[1]} but Image_size says "
            f"{int(expected_size[0])}x{int(expected_size[1])}"
        )
    return arr


def load_hu(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a DeepLesion slice as Hounsfield units (``int16``, ``value - 32768``)."""
    raw = read_png16(path, expected_size)
    return (raw.astype(np.int32) - HU_OFFSET).astype(np.int16)


def write_png16(path: str | Path, hu: np.ndarray) -> None:
    """Write HU values as a DeepLesion 16-bit PNG (``value = HU + 32768``)."""
    arr = np.clip(np.asarray(hu, dtype=np.int32) + HU_OFFSET, 0, 65535).astype(np.uint16)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, optimize=False, compress_level=1)


def window_bounds(
    preset: str | None = None,
    *,
    level: float | None = None,
    width: float | None = None,
    low: float | None = None,
    high: float | None = None,
) -> tuple[float, float]:
    """Resolve a window to ``(low, high)`` HU from a preset name, level/width or low/high."""
    given = sum(x is not None for x in (preset, level, low))
    if given != 1:
        raise ValueError("give exactly one of: preset, level and width, or low and high")
    if preset is not None:
        key = preset.replace("_", " ").lower()
        if key not in WINDOW_PRESETS:
            raise ValueError(
                f"unknown window preset {preset!r}; known: {', '.join(WINDOW_PRESETS)}"
            )
        level, width = WINDOW_PRESETS[key]
    if level is not None:
        if width is None or width <= 0:
            raise ValueError("a window needs a positive width")
        return level - width / 2.0, level + width / 2.0
    if high is None or low >= high:
        raise ValueError("a window needs low < high")
    return float(low), float(high)


def apply_window(
    hu: np.ndarray,
    window: tuple[float, float] | str,
    *,
    dtype: type = np.uint8,
) -> np.ndarray:
    """Map HU to display values through a window.

    Parameters
    ----------
    hu : numpy.ndarray
        Hounsfield units, any shape.
    window : (low, high) or str
        Window bounds in HU, or a preset name from :data:`WINDOW_PRESETS`.
    dtype : numpy dtype, default uint8
        ``uint8`` gives 0-255; a float type gives 0-1.
    """
    low, high = window_bounds(window) if isinstance(window, str) else window
    scale = 1.0 / (high - low)
    x = (hu.astype(np.float32) - np.float32(low)) * np.float32(scale)
    np.clip(x, 0.0, 1.0, out=x)
    if np.dtype(dtype) == np.uint8:
        return (x * 255.0 + 0.5).astype(np.uint8)
    return x.astype(dtype, copy=False)


def _row_get(row: Mapping | object, key: str):
    if isinstance(row, Mapping):
        return row[key]
    return getattr(row, key)


def load_context(
    root: str | Path,
    row: Mapping | object,
    n_slices: int = 3,
    target_spacing_mm: float | None = 2.0,
    *,
    warn: bool = True,
    substituted: list[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Load the key slice with neighbours, resampled to a slice interval.

    Parameters
    ----------
    root : str or pathlib.Path
        The ``Images_png`` folder.
    row : mapping or row-like
        A lesion with ``file_name``, ``key_slice_index``, ``spacing_z``, ``slice_start``,
        ``slice_end``, ``image_height``, ``image_width`` (a manifest row or dict).
    n_slices : int, default 3
        Odd number of output slices centred on the key slice.
    target_spacing_mm : float or None, default 2
        Interval between output slices in mm. ``None`` uses the native interval.
    warn : bool, default True
        Warn (:class:`MissingSliceWarning`, naming the file) when a neighbour is missing and the
        nearest present slice stands in.
    substituted : list, optional
        Receives ``(missing slice, slice used)`` for each neighbour that was missing, so that a
        caller reading many lesions can report them in one line instead of one warning each.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(n_slices, H, W)`` in HU; the key slice in the middle.
    """
    if n_slices < 1 or n_slices % 2 == 0:
        raise ValueError(f"n_slices must be a positive odd number, got {n_slices}")
    file_name = str(_row_get(row, "file_name"))
    key = int(_row_get(row, "key_slice_index"))
    dz = float(_row_get(row, "spacing_z"))
    lo, hi = int(_row_get(row, "slice_start")), int(_row_get(row, "slice_end"))
    size = (int(_row_get(row, "image_height")), int(_row_get(row, "image_width")))
    step = 1.0 if target_spacing_mm is None else float(target_spacing_mm) / dz
    half = n_slices // 2
    positions = key + step * np.arange(-half, half + 1)

    cache: dict[int, np.ndarray] = {}
    present: dict[int, bool] = {}

    def exists(i: int) -> bool:
        if i not in present:
            present[i] = lo <= i <= hi and slice_path(root, file_name, i).is_file()
        return present[i]

    def get(i: int) -> np.ndarray:
        if i in cache:
            return cache[i]
        j = i
        if not exists(i):
            # nearest present slice, searching outward, towards the key slice first
            for d in range(1, max(hi - lo, abs(i - key)) + 2):
                cands = sorted((i - d, i + d), key=lambda c: abs(c - key))
                hit = next((c for c in cands if exists(c)), None)
                if hit is not None:
                    j = hit
                    break
            else:
                raise ImageError(f"{slice_path(root, file_name, key)}: no slice of the series found")
            if substituted is not None:
                substituted.append((i, j))
            if warn:
                warnings.warn(
                    f"{slice_path(root, file_name, i)} is missing; using slice {j:03d} instead",
                    MissingSliceWarning,
                    stacklevel=3,
                )
        cache[i] = load_hu(slice_path(root, file_name, j), size).astype(np.float32)
        return cache[i]

    if not exists(key):
        raise ImageError(f"{slice_path(root, file_name, key)}: key slice file not found")
    out = np.empty((n_slices, *size), dtype=np.float32)
    for k, p in enumerate(positions):
        f = int(np.floor(p + 1e-6))
        frac = float(p - f)
        if frac < 1e-6:
            out[k] = get(f)
        else:
            out[k] = (1.0 - frac) * get(f) + frac * get(f + 1)
    return out


def missing_context_line(missing: np.ndarray, unit: str = "lesions",
                         uncounted: str = "not read yet") -> str | None:
    """One line on the context slices missing on disk, instead of a warning per slice.

    Parameters
    ----------
    missing : (N,) int array
        Neighbour slices that were missing per item (lesion, key slice), as counted through
        :func:`load_context`'s ``substituted``; ``-1``: not read (not counted).
    unit : str, default "lesions"
        What an item is, for the line.
    uncounted : str, default "not read yet"
        What the items counted ``-1`` are, for the line.

    Returns
    -------
    str or None
        e.g. ``context slices: 17 of 18 lesions lacked 34 neighbour slices on disk; the nearest
        present slice of the series stood in``; None when none was missing.
    """
    m = np.asarray(missing)
    short = m > 0
    if not short.any():
        return None
    unknown = int((m < 0).sum())
    extra = f" ({unknown:,} {uncounted}, not counted)" if unknown else ""
    n = int(m[short].sum())
    return (f"context slices: {int(short.sum()):,} of {len(m):,} {unit} lacked {n:,} neighbour "
            f"slice{'s' if n != 1 else ''} on disk; the nearest present slice of the series "
            f"stood in{extra}")


def resample_spacing(
    image: np.ndarray,
    spacing_mm: float | tuple[float, float],
    target_mm: float,
    boxes: np.ndarray | None = None,
    *,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Resample the last two axes of ``image`` to ``target_mm`` per pixel.

    Returns the image, the boxes (``(N, 4)`` x1, y1, x2, y2) scaled alike, and the scale factor.
    """
    from scipy import ndimage

    sy, sx = (spacing_mm, spacing_mm) if np.isscalar(spacing_mm) else spacing_mm
    fy, fx = float(sy) / target_mm, float(sx) / target_mm
    zoom = (1.0,) * (image.ndim - 2) + (fy, fx)
    out = ndimage.zoom(image.astype(np.float32, copy=False), zoom, order=order, mode="nearest")
    scaled = None
    if boxes is not None:
        scaled = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array(
            [fx, fy, fx, fy], dtype=np.float32
        )
    return out, scaled, fx


def crop_patch(
    image: np.ndarray,
    box: Sequence[float],
    *,
    margin: float = 0.5,
    min_size: float = 16.0,
    out_size: int | None = 64,
    fill: float = -1024.0,
) -> np.ndarray:
    """Crop a square patch around a box, padded outside the image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(C, H, W)``.
    box : (x1, y1, x2, y2)
        Lesion box in pixels.
    margin : float, default 0.5
        Context added on each side, as a fraction of the box's longer side.
    min_size : float, default 16
        Smallest side of the crop in pixels (tiny lesions keep some context).
    out_size : int or None, default 64
        Output side after bilinear resizing; ``None`` keeps the crop's own size.
    fill : float, default -1024
        Value outside the image (air in HU).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    side = max(side, min_size)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    a0, b0 = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    s = int(np.ceil(side))
    img = image if image.ndim == 3 else image[None]
    c, h, w = img.shape
    patch = np.full((c, s, s), fill, dtype=np.float32)
    xs0, ys0 = max(a0, 0), max(b0, 0)
    xs1, ys1 = min(a0 + s, w), min(b0 + s, h)
    if xs1 > xs0 and ys1 > ys0:
        patch[:, ys0 - b0 : ys1 - b0, xs0 - a0 : xs1 - a0] = img[:, ys0:ys1, xs0:xs1]
    if out_size is not None and s != out_size:
        from scipy import ndimage

        patch = ndimage.zoom(patch, (1.0, out_size / s, out_size / s), order=1, mode="nearest")
        patch = patch[:, :out_size, :out_size]
        if patch.shape[1] < out_size or patch.shape[2] < out_size:  # rounding guard
            patch = np.pad(
                patch,
                ((0, 0), (0, out_size - patch.shape[1]), (0, out_size - patch.shape[2])),
                mode="edge",
            )
    return patch if image.ndim == 3 else patch[0]


def recist_to_box(recist: Sequence[float], pad: float = 5.0) -> np.ndarray:
    """Box ``(x1, y1, x2, y2)`` around the 4 RECIST end points, padded as the release does."""
    p = np.asarray(recist, dtype=np.float64).reshape(4, 2)
    return np.array(
        [p[:, 0].min() - pad, p[:, 1].min() - pad, p[:, 0].max() + pad, p[:, 1].max() + pad]
    )


def box_to_recist(box: Sequence[float], pad: float = 5.0) -> np.ndarray:
    """Axis-aligned RECIST end points that :func:`recist_to_box` maps back to ``box``.

    The long axis lies along the longer side. Returns 8 numbers: long axis end points, then
    short axis end points (the DeepLesion ``Measurement_coordinates`` order).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 - pad, y2 - pad
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {tuple(box)} is smaller than twice the padding {pad}")
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    horiz = [x1, cy, x2, cy]
    vert = [cx, y1, cx, y2]
    long_, short = (horiz, vert) if (x2 - x1) >= (y2 - y1) else (vert, horiz)
    return np.array(long_ + short)


def recist_diameters(recist: Sequence[float]) -> tuple[float, float]:
    """Long and short diameters (pixels) from the 8 RECIST coordinates."""
    p = np.asarray(recist, dtype=np.float64).reshape(4, 2)
    return float(np.linalg.norm(p[0] - p[1])), float(np.linalg.norm(p[2] - p[3]))

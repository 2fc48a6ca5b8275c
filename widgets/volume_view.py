"""VolumeView: a lesion's sub-volume in axial, coronal and sagittal planes plus a 3-D MIP.

Our own anywidget (ESM ``volume_view.js``, no imports, nothing from a CDN): itkwidgets 1.0
cannot load its viewer offline (see the README, "The lesion in 3-D"), so it is only the optional
path (:meth:`VolumeView.itk_view`) for users with internet access.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import traitlets as t

from deeplesion_lab.errors import LabError
from deeplesion_lab.images import WINDOW_PRESETS
from deeplesion_lab.volume import SubVolume, format_indices, load_subvolume

from .data import LabData
from .lab_widget import LabWidget
from .models import ViewerModel

__all__ = ["VolumeView"]


def _as_data(source, images_root=None) -> LabData:
    if isinstance(source, LabData):
        return source
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            return LabData.from_run(p, images_root=images_root)
        return LabData.from_manifest(p, images_root)
    if hasattr(source, "columns"):  # a manifest DataFrame
        return LabData.from_manifest(source, images_root)
    raise TypeError(f"expected a run directory, a manifest, LabData or ViewerModel, got {type(source)}")


class VolumeView(LabWidget):
    """The lesion's sub-volume in three planes and a 3-D maximum-intensity projection.

    The volume travels once per lesion as raw int16 HU bytes (``z, y, x``, little-endian) and is
    windowed in the browser; planes are drawn with their physical aspect (anisotropic voxels
    are not resampled unless ``isotropic`` asks for it). Click a plane to move the cursor,
    wheel to scroll it; drag the 3-D view to rotate it. The key slice's box and RECIST line are
    drawn where the planes cut them and in the 3-D view.

    Parameters
    ----------
    source : run directory, manifest (path or DataFrame), LabData or ViewerModel
        Where lesions come from. A :class:`widgets.models.ViewerModel` (e.g. ``LesionLab``'s
        ``lab.model.viewer``) is followed: the view shows the lesion selected there and its
        window.
    lesion_id : str, optional
        The lesion to show first.
    images_root : path, optional
        The ``Images_png`` folder (default: the manifest's).
    isotropic : bool or float, default False
        Resample to cubic voxels before sending (see :func:`deeplesion_lab.volume.resample_isotropic`).
    canvas_size : int, default 300
        Side of each of the four panels in CSS pixels.
    active : bool, default True
        While False, a followed selection is only remembered and loaded when it turns True
        (a closed panel costs nothing).

    Examples
    --------
    >>> VolumeView("runs/demo", "000001_01_01_083-1a2b3c4d")  # doctest: +SKIP
    """

    _esm = Path(__file__).with_name("volume_view.js")
    _css = Path(__file__).with_name("volume_view.css")

    volume = t.Bytes(b"").tag(sync=True)
    volume_shape = t.List(t.Int(), default_value=[0, 0, 0]).tag(sync=True)
    spacing = t.List(t.Float(), default_value=[1.0, 1.0, 1.0]).tag(sync=True)
    volume_serial = t.Int(0).tag(sync=True)
    annotation = t.Dict().tag(sync=True)
    cursor = t.List(t.Int(), default_value=[0, 0, 0]).tag(sync=True)
    window_level = t.Float(40.0).tag(sync=True)
    window_width = t.Float(400.0).tag(sync=True)
    preset = t.Unicode("soft tissue").tag(sync=True)
    presets = t.Dict().tag(sync=True)
    lesion_id = t.Unicode("").tag(sync=True)
    requested_lesion = t.Unicode("").tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    subtitle = t.Unicode("").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    canvas_size = t.Int(300).tag(sync=True)
    active = t.Bool(True).tag(sync=True)
    load_ms = t.Float(0.0).tag(sync=True)

    def __init__(self, source, lesion_id: str | None = None, *, images_root=None,
                 isotropic: bool | float = False, **kwargs):
        super().__init__(**kwargs)
        self.isotropic = isotropic
        self.followed: ViewerModel | None = source if isinstance(source, ViewerModel) else None
        self.data = self.followed.data if self.followed is not None else _as_data(source, images_root)
        self.subvolume: SubVolume | None = None
        self._pending: str | None = None
        self._base_presets = {k: [float(v[0]), float(v[1])] for k, v in WINDOW_PRESETS.items()}
        self.presets = dict(self._base_presets)
        if self.followed is not None:
            self.followed.lesion_changed.connect(self._follow)
            self.followed.window_changed.connect(self._follow_window)
        if lesion_id is None and self.followed is not None:
            lesion_id = self.followed.lesion_id
        if lesion_id is None and len(self.data):
            has = self.data.lesions.get("has_image")
            rows = np.flatnonzero(has.to_numpy(bool)) if has is not None else [0]
            lesion_id = str(self.data.lesion_ids[rows[0] if len(rows) else 0])
        if lesion_id is not None:
            self.show_lesion(lesion_id)

    # API ---------------------------------------------------------------------------------------
    def show_lesion(self, lesion_id: str) -> None:
        """Load and show a lesion's sub-volume (later, when the view is not :attr:`active`)."""
        if not self.active:
            self._pending = str(lesion_id)
            return
        self._pending = None
        t0 = time.perf_counter()
        row = self.data.row(lesion_id)
        vol, err = None, ""
        if self.data.images_root is None:
            err = "no images folder: pass images_root"
        else:
            try:
                vol = load_subvolume(self.data.images_root, row, missing="crop",
                                     isotropic=self.isotropic)
            except LabError as exc:
                err = str(exc)
        lo, hi = self.data.lesion_window(row)
        self.subvolume = vol
        with self._quietly():
            self.lesion_id = str(lesion_id)
            self.presets = {**self._base_presets, "dicom": [(lo + hi) / 2.0, hi - lo]}
            if self.followed is not None and self.followed.lesion_id == str(lesion_id):
                self._follow_window()
            else:
                self.window_level, self.window_width, self.preset = (lo + hi) / 2.0, hi - lo, "dicom"
            self.title = f"{lesion_id}"
            if vol is None:
                self.status = err
                self.subtitle = ""
                self.annotation = {}
                self.volume_shape = [0, 0, 0]
                self.volume = b""
            else:
                self._set_volume(vol)
            self.load_ms = round((time.perf_counter() - t0) * 1000.0, 1)
            self.volume_serial = self.volume_serial + 1

    def _set_volume(self, vol: SubVolume) -> None:
        nz, ny, nx = vol.shape
        sz, sy, sx = vol.spacing
        self.subtitle = (
            f"{nz}×{ny}×{nx} voxels · {sx:.2f}×{sy:.2f}×{sz:.2f} mm · "
            f"slices {vol.slice_positions[0]:03.0f}-{vol.slice_positions[-1]:03.0f}"
        )
        notes = []
        if vol.missing:
            notes.append(f"not on disk: {format_indices(vol.missing)}")
        if vol.left_out:
            notes.append(f"beyond a gap, not shown: {format_indices(vol.left_out)}")
        self.status = (f"{vol.folder.name}: range {vol.slice_range[0]:03d}-{vol.slice_range[1]:03d}; "
                       + "; ".join(notes)) if notes else ""
        x1, y1, x2, y2 = (float(v) for v in vol.box)
        self.annotation = {
            "box": [x1, y1, x2, y2],
            "z": float(vol.key_z),
            "recist": [[float(a) for a in p] for p in vol.recist],
        }
        self.volume_shape = [nz, ny, nx]
        self.spacing = [float(sz), float(sy), float(sx)]
        self.cursor = [int(round(vol.key_z)), int(np.clip(round((y1 + y2) / 2), 0, ny - 1)),
                       int(np.clip(round((x1 + x2) / 2), 0, nx - 1))]
        self.volume = np.ascontiguousarray(vol.hu, dtype="<i2").tobytes()

    def itk_view(self, **kwargs):
        """The same sub-volume in itkwidgets 1.0 (optional; its viewer loads from the internet).

        The box is passed as a label image. Needs ``pip install --pre itkwidgets[lab]==1.0a55``
        (see the README); raises a :class:`LabError` naming what is missing otherwise.
        """
        if self.subvolume is None:
            raise LabError(f"no sub-volume loaded ({self.status or 'no lesion'})")
        try:
            import itkwidgets
        except ImportError:
            raise LabError(
                "itkwidgets is not installed: pip install --pre 'itkwidgets[lab]==1.0a55' "
                "(it loads its viewer from the internet; VolumeView works offline)"
            ) from None
        vol = self.subvolume
        image = _itk_image(vol.hu.astype(np.float32), vol.spacing)
        labels = _itk_image(vol.box_mask(), vol.spacing)
        return itkwidgets.view(image=image, label_image=labels, **kwargs)

    # followed selection --------------------------------------------------------------------------
    def _follow(self, lesion_id: str) -> None:
        self.show_lesion(lesion_id)

    def _follow_window(self) -> None:
        m = self.followed
        if m is None or m.lesion_id != self.lesion_id:
            return
        with self._quietly():
            self.window_level, self.window_width = float(m.level), float(m.width)
            self.preset = m.preset if m.preset in self.presets else "custom"

    @t.observe("active")
    def _activated(self, change) -> None:
        if change["new"] and self._pending is not None:
            self.show_lesion(self._pending)

    @t.observe("requested_lesion")
    def _requested(self, change) -> None:
        if not self._quiet and change["new"]:
            lid = change["new"].split("#", 1)[0]  # "id#n": the same lesion asked for again
            self.show_lesion(lid)

    @t.observe("preset")
    def _preset(self, change) -> None:
        if self._quiet or change["new"] not in self.presets:
            return
        level, width = self.presets[change["new"]]
        with self._quietly():
            self.window_level, self.window_width = float(level), float(width)


def _itk_image(arr: np.ndarray, spacing_zyx):
    """An NGFF image with its spacing (what itkwidgets 1.0 converts arrays to)."""
    from ngff_zarr import to_ngff_image

    sz, sy, sx = (float(v) for v in spacing_zyx)
    return to_ngff_image(np.ascontiguousarray(arr), dims=["z", "y", "x"],
                         scale={"z": sz, "y": sy, "x": sx})

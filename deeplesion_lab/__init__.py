"""deeplesion-lab: mine, explore and correct DeepLesion-style lesion annotations.

The core library (no Jupyter, Panel or browser imports). Main entry points:

- :func:`read_dl_info`, :func:`build_manifest`, :func:`read_manifest`: the data layer;
- :mod:`deeplesion_lab.images`: slices in HU, windowing, context, crops;
- :mod:`deeplesion_lab.transforms`: dictionary-sample transforms for models;
- :class:`LabelStore`: durable corrections with history, undo and snapshots.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .dl_info import DLInfo, DLInfoError, read_dl_info
from .errors import LabError
from .images import ImageError, apply_window, load_context, load_hu
from .lesion_types import COARSE_TYPES, TYPE_COLORS
from .manifest import build_manifest, read_manifest, write_manifest

__all__ = [
    "__version__",
    "COARSE_TYPES",
    "TYPE_COLORS",
    "DLInfo",
    "DLInfoError",
    "ImageError",
    "LabError",
    "LabelStore",
    "apply_window",
    "build_manifest",
    "load_context",
    "load_hu",
    "read_dl_info",
    "read_manifest",
    "write_manifest",
]


def __getattr__(name: str):
    # The label store loads on first use, so that `deeplesion-lab COMMAND --help` stays light.
    if name == "LabelStore":
        from .labels import LabelStore

        return LabelStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

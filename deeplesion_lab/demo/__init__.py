"""The embedded demo dataset: synthetic CT slices in the DeepLesion format.

``generate_demo`` writes a complete dataset (``DL_info.csv`` in the official format, 16-bit
``Images_png`` slices and a ``truth.parquet`` of every lesion) so that the lab runs with no
download; ``render_like`` renders synthetic slices for the rows of a real ``DL_info.csv``.

Examples
--------
>>> from deeplesion_lab.demo import generate_demo
>>> res = generate_demo("data/demo", n_patients=8, seed=0)   # doctest: +SKIP
>>> res.csv_path, res.images_root, res.truth_path            # doctest: +SKIP
"""

from __future__ import annotations

from .generator import DemoResult, generate_demo
from .like import render_like
from .writer import DemoOutputError

__all__ = ["DemoResult", "DemoOutputError", "generate_demo", "render_like"]

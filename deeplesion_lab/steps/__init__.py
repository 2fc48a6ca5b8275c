"""The lab's steps as library functions with plain arguments.

Each step takes a :class:`~deeplesion_lab.run.RunDir` and its settings, writes the run's files
and says whether it is done (``*_done``): the ``deeplesion-lab`` commands parse their arguments
and call these, the pipeline calls them directly, and a notebook can too.

- :mod:`.embed`: :func:`embed_run` (train the embedder, write ``embeddings.parquet``);
- :mod:`.mine`: :func:`mine_run` (pseudo-labels and the map).
"""

from __future__ import annotations

from .embed import EmbedResult, EmbedSettings, embed_done, embed_run
from .mine import MineResult, MineSettings, align_to_previous, mine_done, mine_run

__all__ = [
    "EmbedResult",
    "EmbedSettings",
    "MineResult",
    "MineSettings",
    "align_to_previous",
    "embed_done",
    "embed_run",
    "mine_done",
    "mine_run",
]

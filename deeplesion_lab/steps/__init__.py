"""The lab's steps as library functions with plain arguments.

Each step takes a :class:`~deeplesion_lab.run.RunDir` and its settings, writes the run's files
and says whether it is done (``*_done``): the ``deeplesion-lab`` commands parse their arguments
and call these, the pipeline calls them directly, and a notebook can too.

- :mod:`.embed`: :func:`embed_run` (train the embedder, write ``embeddings.parquet``);
- :mod:`.mine`: :func:`mine_run` (pseudo-labels and the map);
- :mod:`.evaluate`: :func:`~.evaluate.evaluate_step` (clustering, retrieval, classification);
- :mod:`.labels`: :func:`~.labels.init_label_store` (pseudo-labels into the label store);
- :mod:`.train_detector`: :func:`~.train_detector.train_detector_run` (a new detector; the
  pipeline runs it as a background job, two side by side);
- :mod:`.detect`: :func:`~.detect.detect_run`, :func:`~.detect.evaluate_detections` (FROC), and
  the done checks of detector training and fine-tuning (which run as jobs);
- :mod:`.corrections`: :func:`~.corrections.simulate_corrections` (the demo's stand-in
  annotator);
- :mod:`.graph`: :func:`~.graph.graph_step` (lesion graph, matching, proposals);
- :mod:`.report`: :func:`~.report.report_step` (``report.html``).
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

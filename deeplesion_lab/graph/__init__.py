"""The lesion graph (Yan et al., CVPR 2018): similar lesions, the same lesion across a patient's
studies, and lesions that were visible but never annotated.

- :mod:`.lesion_table`: manifest + embeddings joined (:func:`lesion_table`);
- :mod:`.matching`: :class:`LesionMatcher`, within-patient cross-study lesion matching;
- :mod:`.tracks`: :func:`build_tracks`, lesion tracks (size over time);
- :mod:`.lesion_graph`: :class:`LesionGraph` (nodes/edges parquet, networkx);
- :mod:`.missing`: proposals of unannotated lesions from detections, their evaluation and
  acceptance;
- :mod:`.review`: reviewing proposals (accept, accept as a type, reject; undoable events);
- :mod:`.truth`: the demo truth file.

Examples
--------
>>> from deeplesion_lab.graph import LesionMatcher, build_tracks, lesion_table  # doctest: +SKIP
>>> table = lesion_table(manifest, *run.load_embeddings())                     # doctest: +SKIP
>>> matcher = LesionMatcher().fit(val_X, val_track_ids)                        # doctest: +SKIP
>>> tracks = build_tracks(table.lesions, matcher.predict(table.frame()))       # doctest: +SKIP
"""

from .lesion_graph import EDGE_COLUMNS, NODE_COLUMNS, LesionGraph, build_lesion_graph
from .lesion_table import GraphError, LesionTable, lesion_table
from .matching import (
    PAIR_FEATURES,
    LesionMatcher,
    assign_pairs,
    candidate_pairs,
    matching_metrics,
    pair_labels,
    split_patients,
)
from .missing import (
    PROPOSAL_COLUMNS,
    accept_proposals,
    evaluate_proposals,
    neighbour_rows,
    pairwise_iou,
    proposal_manifest,
    proposal_similarity,
    propose_missing,
    rank_proposals,
    read_accepted,
)
from .review import (
    DECISIONS,
    decide_proposals,
    proposal_status,
    read_proposals,
    review_queue,
)
from .tracks import TRACK_COLUMNS, build_tracks
from .truth import read_truth, track_ids_for

__all__ = [
    "DECISIONS",
    "decide_proposals",
    "proposal_status",
    "read_proposals",
    "review_queue",
    "EDGE_COLUMNS",
    "NODE_COLUMNS",
    "PAIR_FEATURES",
    "PROPOSAL_COLUMNS",
    "TRACK_COLUMNS",
    "GraphError",
    "LesionGraph",
    "LesionMatcher",
    "LesionTable",
    "accept_proposals",
    "assign_pairs",
    "build_lesion_graph",
    "build_tracks",
    "candidate_pairs",
    "evaluate_proposals",
    "lesion_table",
    "matching_metrics",
    "neighbour_rows",
    "pair_labels",
    "pairwise_iou",
    "proposal_manifest",
    "proposal_similarity",
    "propose_missing",
    "rank_proposals",
    "split_patients",
    "read_accepted",
    "read_truth",
    "track_ids_for",
]

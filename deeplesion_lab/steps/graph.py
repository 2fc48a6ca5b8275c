"""The lesion-graph step: graph, matching, tracks and proposals of a run, with their summary.

``deeplesion-lab graph`` parses its arguments and calls :func:`graph_step`; so does the
pipeline. The work is :func:`deeplesion_lab.graph.build.build_run_graph`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..run import RunDir

__all__ = ["graph_done", "graph_step"]


def graph_done(run: RunDir) -> bool:
    """Whether the run's matching figures are in ``metrics.json``."""
    return "matching" in run.load_metrics()


def graph_step(
    run: RunDir | str | Path,
    *,
    truth: str | Path | None = None,
    predictions: str | Path | None = None,
    n_neighbors: int = 10,
    eval_split: int | None = 3,
    neighbour_slices: int = 1,
    detector_model: str | None = None,
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] = print,
):
    """Build the run's lesion graph (:func:`~deeplesion_lab.graph.build.build_run_graph`, same
    arguments) and say what it found; returns its :class:`~deeplesion_lab.graph.build.GraphResult`."""
    from ..graph.build import build_run_graph

    run_path = run.path if isinstance(run, RunDir) else Path(run)
    res = build_run_graph(
        run_path, truth=truth, predictions=predictions, n_neighbors=n_neighbors,
        eval_split=eval_split, neighbour_slices=neighbour_slices,
        detector_model=detector_model, seed=seed, progress=progress,
    )
    for m in res.messages:
        say(m)
    say(f"graph: {res.graph.summary()}")
    mt = res.metrics["matching"]
    if mt.get("evaluated"):
        say(
            f"matching ({mt['evaluation']}; {mt['eval_patients']} patients, "
            f"{mt['eval_pairs']} pairs): "
            f"precision {mt['precision']:.3f}, recall {mt['recall']:.3f}, F1 {mt['f1']:.3f}, "
            f"AUC {mt['auc']:.3f} (threshold {mt['threshold']:.3f}); baselines: location only "
            f"F1 {mt['location_only_f1']:.3f}, appearance (embedding) only "
            f"F1 {mt['appearance_only_f1']:.3f}"
        )
        say(
            f"matching on the split alone ({mt['split_eval_pairs']} pairs): F1 "
            f"{mt['split_f1']:.3f}, location only {mt['split_location_only_f1']:.3f}, "
            f"appearance only {mt['split_appearance_only_f1']:.3f}"
        )
    say(f"tracks: {mt['tracks']} ({mt['tracks_multi_study']} followed over 2+ studies)")
    mm = res.metrics["missing_annotations"]
    if "recall_at_1" in mm:
        say(
            f"missing annotations ({mm['n_missing']} unannotated lesions on {mm['n_images']} "
            f"images, {mm['evaluated_on']}): recall@0.5 {mm['recall_at_0_5']:.3f}, "
            f"@1 {mm['recall_at_1']:.3f}, @2 {mm['recall_at_2']:.3f}, "
            f"precision of top {mm['precision_at_top']:.3f}"
        )
    for name, path in res.paths.items():
        say(f"wrote {name}: {path}")
    return res

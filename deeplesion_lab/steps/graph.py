"""The lesion-graph step: graph, matching, tracks and proposals of a run, with their summary.

``deeplesion-lab graph`` parses its arguments and calls :func:`graph_step`; so does the
pipeline. The work is :func:`deeplesion_lab.graph.build.build_run_graph`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..run import RunDir

__all__ = ["graph_done", "graph_step"]


def graph_done(run: RunDir) -> bool:
    """Whether the run's matching figures are in ``metrics.json``."""
    return "matching" in run.load_metrics()


def graph_step(
    run: RunDir | str | Path,
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
    **options: Any,
):
    """Build the run's lesion graph and say what it found.

    Parameters
    ----------
    run : RunDir or path
    progress : bool, default True
        Progress bars.
    say : callable, default print
        Where the summary lines go.
    **options
        The keyword arguments of :func:`~deeplesion_lab.graph.build.build_run_graph`
        (``truth``, ``predictions``, ``n_neighbors``, ``eval_split``, ...), passed on as given.

    Returns
    -------
    GraphResult
        :func:`~deeplesion_lab.graph.build.build_run_graph`'s result.
    """
    from ..graph.build import build_run_graph

    run_path = run.path if isinstance(run, RunDir) else Path(run)
    res = build_run_graph(run_path, progress=progress, **options)
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

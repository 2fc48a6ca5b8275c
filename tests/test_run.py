"""The run directory's layout and its metrics reader."""

from __future__ import annotations

import pytest

from deeplesion_lab.run import RunDir, RunError


def test_every_path_is_inside_the_run_and_distinct(tmp_path):
    run = RunDir(tmp_path / "r")
    paths = {
        name: getattr(run, name)
        for name in ("run_json", "embeddings", "pseudo_labels", "umap", "metrics", "label_db",
                     "detector_dir", "graph_dir", "embedder", "cache_dir", "patch_cache",
                     "umap_cache", "embedding_chunks", "jobs_dir", "exports_dir", "report",
                     "graph_pairs", "graph_tracks", "graph_proposals", "graph_detections",
                     "graph_record")
    }
    assert len(set(paths.values())) == len(paths)
    for name, p in paths.items():
        assert p.is_relative_to(run.path), name
    for name in ("patch_cache", "umap_cache", "embedding_chunks"):
        assert paths[name].parent == run.cache_dir, name
    for name in ("graph_pairs", "graph_tracks", "graph_proposals", "graph_record"):
        assert paths[name].parent == run.graph_dir, name
    assert run.embedder.name == "embedder.pt" and run.patch_cache.parts[-2:] == ("cache", "patches")


def test_load_metrics(tmp_path):
    run = RunDir(tmp_path)
    assert run.load_metrics() == {}  # no step wrote it yet
    run.update_metrics({"mining": {"nmi": 0.5}})
    run.update_metrics({"mining": {"purity": 0.25}, "graph": {"n": 3}})
    assert run.load_metrics() == {"mining": {"nmi": 0.5, "purity": 0.25}, "graph": {"n": 3}}
    run.metrics.write_text('{"mining":\n  {"nmi": 0.5,}\n}')
    with pytest.raises(RunError, match=r"metrics\.json: line 2: not valid JSON"):
        run.load_metrics()
    run.metrics.write_text("[1, 2]")
    with pytest.raises(RunError, match="expected a JSON object, got list"):
        run.load_metrics()

"""Atomic writes and locked JSON updates (metrics.json is updated by several processes)."""

from __future__ import annotations

import json
import multiprocessing as mp

from deeplesion_lab.atomic import update_json


def _writer(path: str, who: str, n: int) -> None:
    for i in range(n):
        update_json(path, {"detection": {f"{who}-{i}": {"i": i}}, "last": who})


def test_concurrent_updates_from_processes_all_land(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    update_json(path, {"embedding": {"accuracy": 0.5}})
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 60)) for w in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads(path.read_text())
    assert data["embedding"] == {"accuracy": 0.5}  # what was there before is kept
    assert len(data["detection"]) == 180  # without the lock, read-modify-write loses some
    assert data["last"] in {"a", "b", "c"}
    assert not list(tmp_path.glob(".metrics.json.*.tmp"))  # no temporary file left behind


def test_replace_swaps_a_key_path_whole_and_merges_the_rest(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    update_json(path, {"finetune": {"after": {"class_aware": 1, "n": 3}, "after_class_head": {}},
                       "detection": {"ft": {"class_aware": 1}, "single": {"n": 1}}})
    update_json(path, {"finetune": {"after": {"n": 4}}, "detection": {"ft": {"n": 2}}},
                replace=[("finetune",), ("detection", "ft")])
    data = json.loads(path.read_text())
    assert data["finetune"] == {"after": {"n": 4}}  # nothing of the older result lingers
    assert data["detection"] == {"ft": {"n": 2}, "single": {"n": 1}}  # siblings kept
    update_json(path, {"finetune": {"after": {"m": 5}}})  # without replace: merged as before
    assert json.loads(path.read_text())["finetune"] == {"after": {"n": 4, "m": 5}}

"""Training on several processes (torchrun, DDP with gloo on the CPU) and the device options.

Real torchrun, real processes, the tiny series of ``detector_fixtures`` (96 px, 5 training key
slices, so that a batch of 4 leaves a last batch of 1: one process gets an empty share).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from detector_fixtures import make_detection_data

from deeplesion_lab.cli import main
from deeplesion_lab.detection.train import LesionDetector
from deeplesion_lab.device import (
    DeviceError,
    autocast,
    loader_options,
    resolve_device,
    torch_threads,
)
from deeplesion_lab.run import RunDir

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TINY = ["--arch", "centernet", "--width", "8", "--image-size", "96", "--spacing-mm", "1.0",
        "--batch-size", "4", "--train-crop", "0", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    d = make_detection_data(out / "data")
    RunDir(out / "run").init(d.manifest_path)
    return out / "run"


def _torchrun(run: Path, name: str, *extra: str, timeout: float = 240,
              popen: bool = False):
    cmd = [*TORCHRUN, "--nproc-per-node", "2", "--max-restarts", "0", "-m", "deeplesion_lab",
           "--", "train-detector", "--run", str(run), "--name", name, *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _weights(run: Path, name: str) -> dict:
    return torch.load(run / "detector" / name / "model.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_torchrun_two_processes_equal_one_process_with_two_micro_batches(run, capsys) -> None:
    res = _torchrun(run, "ddp", "--epochs", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert main(["train-detector", "--run", str(run), "--name", "one", *TINY, "--epochs", "2",
                 "--micro-batches", "2"]) == 0
    assert main(["train-detector", "--run", str(run), "--name", "plain", *TINY,
                 "--epochs", "2"]) == 0
    capsys.readouterr()
    ddp, one, plain = (_weights(run, n) for n in ("ddp", "one", "plain"))
    # the same training: each process's half of every batch, gradients averaged by size
    assert _max_diff(ddp, one) < 1e-5
    # ... which is not the full-batch run (batch norm sees halves), so the check can fail
    assert _max_diff(ddp, plain) > 1e-3
    assert ddp["n_iter"] == one["n_iter"] == 4
    for a, b in zip(ddp["history"], one["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["images"] == b["images"] == 5
        assert a["processes"] == 2 and "processes" not in b
    la, lb = dict(ddp["lineage"]), dict(one["lineage"])
    assert la.pop("created") and lb.pop("created")
    assert la == lb and la["micro_batches"] == 2
    last_a = torch.load(run / "detector" / "ddp" / "last.pt", weights_only=True)
    last_b = torch.load(run / "detector" / "one" / "last.pt", weights_only=True)
    assert last_a["fingerprint"] == last_b["fingerprint"]


def _kill_rank(proc: subprocess.Popen, rank: str, sig: int) -> int:
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "train-detector" in child.cmdline():
                child.send_signal(sig)
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError(f"no worker of rank {rank} found")


@pytest.mark.slow
def test_a_killed_worker_is_reported_and_the_rerun_resumes(run, capsys) -> None:
    epochs = ["--epochs", "40", "--checkpoint-every", "1"]
    last = run / "detector" / "killed" / "last.pt"
    proc = _torchrun(run, "killed", *epochs, popen=True)
    t0 = time.time()
    while time.time() - t0 < 120:
        if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 6:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("no checkpoint after 120 s: " + proc.communicate()[0])
    _kill_rank(proc, "1", signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # torchrun names the failed process and how it ended
    assert "rank      : 1" in out and "Signal 9" in out or "exitcode  : -9" in out, out
    stopped = torch.load(last, weights_only=True)["global_step"]
    assert 6 <= stopped < 80
    res = _torchrun(run, "killed", *epochs)
    assert res.returncode == 0, res.stdout + res.stderr
    done = _weights(run, "killed")
    assert done["n_iter"] == 80 and len(done["history"]) == 40
    # and it is the uninterrupted training: one process, the same two micro-batches
    assert main(["train-detector", "--run", str(run), "--name", "straight", *TINY, *epochs,
                 "--micro-batches", "2"]) == 0
    capsys.readouterr()
    assert _max_diff(done, _weights(run, "straight")) < 1e-5


# the device options --------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_line_and_auto_falls_back(run, capsys) -> None:
    with pytest.raises(DeviceError, match=r"--device cuda: CUDA is not available .*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
    assert "no CUDA GPU visible to torch, running on the CPU" in capsys.readouterr().err
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    rc = main(["train-detector", "--run", str(run), "--name", "nogpu", *TINY, "--epochs", "1",
               "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "CUDA is not available" in err
    assert not (run / "detector" / "nogpu" / "model.pt").exists()


def test_cpu_runs_in_float32_without_workers_or_pinned_memory() -> None:
    cpu = torch.device("cpu")
    with autocast(cpu):
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.float32
    assert loader_options(cpu) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(torch.device("cuda", 0), 3)["pin_memory"] is True


def test_fit_and_predict_restore_torch_threads(run) -> None:
    manifest = RunDir(run).load_manifest()
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    det = LesionDetector(arch="centernet", width=8, image_size=96, spacing_mm=1.0, epochs=1,
                         batch_size=4, num_threads=want, progress=False)
    seen = []
    det.fit(manifest, callback=lambda info: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {want}  # the setting held during fit ...
    assert torch.get_num_threads() == before  # ... and is the caller's again after it
    det.predict(manifest, "test")
    assert torch.get_num_threads() == before
    with torch_threads(want):
        assert torch.get_num_threads() == want
    assert torch.get_num_threads() == before


def test_micro_batches_must_fit_the_batch(run) -> None:
    from deeplesion_lab.detection.model import ModelError

    manifest = RunDir(run).load_manifest()
    det = LesionDetector(arch="centernet", width=8, image_size=96, spacing_mm=1.0, epochs=1,
                         batch_size=2, micro_batches=3, progress=False)
    with pytest.raises(ModelError, match="batch_size=2 is smaller than the 3 micro-batches"):
        det.fit(manifest)


# the embedding -------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_embed_equals_one_process_with_two_micro_batches(tmp_path, capsys) -> None:
    from embedding_fixtures import make_synthetic

    from deeplesion_lab.manifest import write_manifest

    csv_path, _ = make_synthetic(tmp_path / "data", n_per_type=3, size=96)
    manifest = write_manifest(csv_path, tmp_path / "m.parquet")
    manifest = tmp_path / "m.parquet"
    args = [str(manifest), "--epochs", "2", "--batch-size", "6", "--embed-dim", "16",
            "--threads", "1", "--no-progress"]
    cmd = [*TORCHRUN, "--nproc-per-node", "2", "-m", "deeplesion_lab", "--", "embed",
           "--run", str(tmp_path / "ddp"), *args]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert main(["embed", "--run", str(tmp_path / "one"), *args, "--micro-batches", "2"]) == 0
    assert main(["embed", "--run", str(tmp_path / "plain"), *args]) == 0
    capsys.readouterr()
    ddp, one, plain = (torch.load(tmp_path / n / "embedder.pt", weights_only=True)["state_dict"]
                       for n in ("ddp", "one", "plain"))

    def diff(a, b):
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

    assert diff(ddp, one) < 1e-5
    assert diff(ddp, plain) > 1e-3  # the halves are not the whole batch: the check can fail
    ra, rb = (RunDir(tmp_path / n).load_embeddings()[1] for n in ("ddp", "one"))
    assert abs(ra - rb).max() < 1e-4
    import json

    ha, hb = (json.loads((tmp_path / n / "embedder.json").read_text()) for n in ("ddp", "one"))
    assert [h["triplet_loss"] for h in ha["history"]] == pytest.approx(
        [h["triplet_loss"] for h in hb["history"]], rel=1e-5)
    assert ha["training"] == hb["training"] and ha["training"]["params"]["micro_batches"] == 2

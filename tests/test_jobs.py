"""Background jobs with real processes: progress from the command's bars, a record per job,
refusal of a second copy, SIGKILL mid-training then resume to the same model, a failing job
that names its log, and the ``jobs`` command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from deeplesion_lab.jobs import (
    JobBusy,
    ProgressParser,
    is_running,
    read_job,
    read_jobs,
    run_job,
    start_job,
    wait_for_jobs,
)
from deeplesion_lab.manifest import write_manifest
from deeplesion_lab.run import RunDir

pytestmark = pytest.mark.timeout(600)

SMALL = ["--image-size", "128", "--spacing-mm", "3.2", "--box-head", "64", "--batch-size", "4",
         "--threads", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from deeplesion_lab.demo import generate_demo

    out = tmp_path_factory.mktemp("jobs")
    res = generate_demo(out / "demo", n_patients=4, seed=0, size=256, progress=False)
    write_manifest(res.csv_path, out / "manifest.parquet")
    return RunDir(out / "run").init(out / "manifest.parquet").path


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _train(run: Path, epochs: int) -> list[str]:
    return ["train-detector", "--run", str(run), "--classes", "single", "--epochs", str(epochs),
            *SMALL]


def test_progress_is_read_from_nested_bars_and_losses():
    p = ProgressParser()
    p.feed("epoch 2/4:  50%|#####     | 5/10 [00:01<00:01, 4.1batch/s, loss=0.731]\r")
    assert p.fraction == pytest.approx((1 + 0.5) / 4)
    assert p.losses == [0.731] and "epoch 2/4" in p.message
    p.feed("embeddings:  25%|##  | 1")  # an unfinished line waits for its end
    assert p.fraction == pytest.approx(0.375)
    p.feed("0/40 [00:02<00:06]\n")
    assert p.fraction == pytest.approx(0.25)
    p.feed("[pipeline] lesion graph ... (step 9/10)\n")
    assert p.fraction == pytest.approx(0.8)
    p.feed("patches:  50%|#####     | 20/40 [00:02<00:02]\r")
    assert p.fraction == pytest.approx(0.85), "a step's bar moves within that step"


def test_progress_of_a_command_in_phases_never_steps_back():
    # fine-tuning: evaluate (a bar), train (epoch bars), evaluate again (a bar from 0 again)
    lines = ["(phase 1/3) before: evaluating single on the test split ...\n",
             "detect:  50%|#####     | 5/10 [00:01<00:01]\r",
             "detect: 100%|##########| 10/10 [00:02<00:00]\n",
             "(phase 2/3) fine-tuning single-ft on the corrected labels ...\n",
             "epoch 1/2:  50%|#####     | 5/10 [00:01<00:01, loss=0.9]\r",
             "epoch 2/2: 100%|##########| 10/10 [00:02<00:00, loss=0.5]\n",
             "(phase 3/3) after: evaluating single-ft on the test split ...\n",
             "detect:  10%|#         | 1/10 [00:00<00:02]\r",
             "detect: 100%|##########| 10/10 [00:02<00:00]\n"]
    p, seen = ProgressParser(), []
    for line in lines:
        p.feed(line)
        seen.append(p.fraction)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert seen[1] == pytest.approx(0.5 / 3) and seen[4] == pytest.approx((1 + 0.25) / 3)
    # inside a pipeline's step, phases divide that step
    p.feed("[pipeline] fine-tune ... (step 2/4)\n")
    p.feed("(phase 2/2) training\n")
    assert p.fraction == pytest.approx((1 + 0.5) / 4)
    # without phase lines, a second bar starts from 0 again (what the phases are for)
    q = ProgressParser()
    q.feed("detect: 100%|##########| 10/10 [00:02<00:00]\n")
    q.feed("detect:  10%|#         | 1/10 [00:00<00:02]\r")
    assert q.fraction == pytest.approx(0.1)


def test_a_job_records_state_progress_user_and_log(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "run")
    rec = run_job(run, "train-single", _train(run, 2), user="alice", update_s=0.1)
    assert rec.state == "done" and rec.exit_code == 0 and rec.progress == 1.0
    again = read_job(run, "train-single")
    assert again.state == "done" and again.user == "alice" and again.pid == os.getpid()
    assert again.history, "the losses of the bars were recorded"
    log = Path(again.log).read_text()
    assert "deeplesion-lab train-detector" in log and "epoch 2/2" in log
    assert (run / "detector" / "single" / "model.pt").is_file()
    r = subprocess.run([sys.executable, "-m", "deeplesion_lab.cli", "jobs", "--run", str(run)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "train-single" in r.stdout and "done" in r.stdout


def test_a_failing_job_reports_its_log(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "run")
    rec = run_job(run, "bad", ["train-detector", "--run", str(run), "--classes", "pseudo",
                               "--epochs", "1", *SMALL])  # no pseudo-labels in this run
    assert rec.state == "failed" and rec.exit_code == 2
    assert "error" in rec.message and Path(rec.log).is_file()
    assert rec.message in Path(rec.log).read_text()


def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_model(run_dir, tmp_path):
    straight = _copy(run_dir, tmp_path / "a")
    assert run_job(straight, "t", _train(straight, 4)).state == "done"
    run = _copy(run_dir, tmp_path / "b")
    rec = start_job(run, "t", _train(run, 4), user="bob")
    assert rec.state == "running" and rec.user == "bob"
    with pytest.raises(JobBusy, match="already running"):
        start_job(run, "t", _train(run, 4))
    with pytest.raises(JobBusy):
        run_job(run, "t", _train(run, 4))
    last = run / "detector" / "single" / "last.pt"
    t0 = time.monotonic()
    while not last.is_file() and time.monotonic() - t0 < 300:
        time.sleep(0.1)
    assert last.is_file(), "no checkpoint after the first epoch"
    os.killpg(rec.pid, signal.SIGKILL)  # the job and its command
    t0 = time.monotonic()
    while is_running(run, "t") and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    assert not is_running(run, "t"), "the lock outlived the killed job"
    killed = read_job(run, "t")
    assert killed.state == "interrupted"
    if (run / "detector" / "single" / "model.pt").is_file():
        pytest.skip("the machine finished the training before the kill")
    start_job(run, "t", _train(run, 4))
    (done,) = wait_for_jobs(run, ["t"], timeout=300)
    assert done.state == "done", Path(done.log).read_text()[-2000:]
    second = Path(done.log).read_text().split("--- job t:")[-1]
    assert "epoch 1/4" not in second and "epoch 4/4" in second, "it did not resume"
    a = torch.load(straight / "detector" / "single" / "model.pt", weights_only=False)
    b = torch.load(run / "detector" / "single" / "model.pt", weights_only=False)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5), k
    assert [r.name for r in read_jobs(run)] == ["t"]


def _state(ckpt) -> dict:
    for key in ("model", "state_dict", "model_state"):
        if isinstance(ckpt, dict) and key in ckpt:
            return ckpt[key]
    return ckpt


def test_job_names_are_checked(run_dir):
    from deeplesion_lab.errors import LabError

    with pytest.raises(LabError, match="job name"):
        run_job(run_dir, "../escape", ["--help"])
    assert pd.Series(os.listdir(run_dir)).str.contains("escape").sum() == 0


def test_a_notebook_waits_for_a_background_job_then_shows_its_output(run_dir, tmp_path):
    """nbclient runs a notebook while a job runs: it shows the wait and then the job's result."""
    import nbformat
    from nbclient import NotebookClient

    run = _copy(run_dir, tmp_path / "run")
    out = tmp_path / "demo-out"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "from deeplesion_lab.jobs import wait_with_progress\n"
            f"recs = wait_with_progress({str(run)!r}, poll_s=0.2)\n"
            "print('waited for', [r.name for r in recs])"),
        nbformat.v4.new_code_cell(
            "import pandas as pd\n"
            f"print('rows', len(pd.read_csv({str(out / 'DL_info.csv')!r})))"),
    ])
    client = NotebookClient(nb, timeout=300, kernel_name="python3")
    with client.setup_kernel():  # the kernel is up: the job starts, then the cells run
        start_job(run, "make-demo", ["demo-data", "--out", str(out), "--patients", "4",
                                     "--seed", "3"])
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
    assert "waiting for the background job(s) make-demo" in text
    assert "waited for ['make-demo']" in text and "rows " in text
    assert read_job(run, "make-demo").state == "done"


def test_waiting_for_a_failed_job_says_which_and_where_its_log_is(run_dir, tmp_path):
    from deeplesion_lab.errors import LabError
    from deeplesion_lab.jobs import wait_with_progress

    run = _copy(run_dir, tmp_path / "run")
    start_job(run, "broken", ["train-detector", "--run", str(run), "--classes", "pseudo", *SMALL])
    with pytest.raises(LabError, match="job 'broken' failed.*broken.log"):
        wait_with_progress(run, poll_s=0.1)
    assert wait_with_progress(run) == [], "nothing runs: no wait"

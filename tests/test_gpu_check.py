"""``bench/gpu_check.sh`` on the CPU with its tiny setting (the GPU run itself needs a GPU)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LIKE = REPO.parent / "shared" / "deeplesion_real" / "DL_info_test.csv"


@pytest.mark.skipif(not LIKE.is_file(), reason=f"{LIKE} absent (the real DL_info.csv the check "
                                              "renders like)")
def test_gpu_check_script_runs_tiny_on_the_cpu_and_writes_its_table(tmp_path) -> None:
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "GPU_CHECK_SIZE": "tiny", "GPU_CHECK_NO_GPU_REASON": "test run",
           "PYTHON": str(REPO / ".venv" / "bin" / "python")}
    res = subprocess.run([str(REPO / "bench" / "gpu_check.sh"), "--out", str(out),
                          "--threads", "1"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    text = out.read_text()
    assert "Command: `bench/gpu_check.sh --size tiny`" in text
    row = next(line for line in text.splitlines() if line.startswith("| cpu |"))
    numbers = [float(v) for v in re.findall(r"\| ([0-9.]+) (?=\|)", row)]
    assert len(numbers) == 5 and all(v > 0 for v in numbers)  # five measured rates, none empty
    if torch.cuda.is_available():
        assert re.search(r"^\| cuda", text, re.M) and "not run" not in text
    else:
        assert "| cuda | not run: test run |" in text


def test_gpu_check_without_its_csv_stops_with_one_line(tmp_path) -> None:
    res = subprocess.run([str(REPO / "bench" / "gpu_check.sh"), "--like",
                          str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.md")],
                         env={**os.environ, "PYTHON": str(REPO / ".venv" / "bin" / "python")},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        f"gpu_check: {tmp_path / 'none.csv'}: no DL_info.csv to render like (set GPU_CHECK_LIKE "
        "or --like to a real DeepLesion DL_info.csv)"]
    assert not (tmp_path / "x.md").exists()

"""`make lab` as a newcomer runs it (issue 21): the URL it prints works, and figures can appear.

The pipeline prerequisite is skipped (``make -o pipeline``): these tests are about what the
``lab`` target itself does.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def test_make_sets_no_matplotlib_backend_for_jupyter():
    """An exported MPLBACKEND=Agg reaches the kernels, and ipykernel then draws nothing inline."""
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "show-mpl: ; @echo \"[$$MPLBACKEND]\"",
         "show-mpl"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert out.strip() == "[]", f"make exports MPLBACKEND to its recipes: {out.strip()}"


def test_make_lab_prints_the_url_jupyter_really_serves(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    env.pop("MAKEFLAGS", None)
    proc = subprocess.Popen(
        ["make", "-s", "--no-print-directory", "-o", "pipeline", "lab", f"LAB_PORT={port}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        url, seen, t0 = None, [], time.time()
        for line in proc.stdout:
            seen.append(line)
            m = re.search(r"serving at (\S+)", line)
            if m:
                url = m.group(1)
                break
            assert time.time() - t0 < 180, "no URL printed in 3 minutes"
        assert url, "".join(seen)[-2000:]
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]+)", url)
        assert m, url
        assert int(m.group(1)) != port, "the busy LAB_PORT was printed, not the port Jupyter took"
        # no wall of Jupyter's INFO lines (extensions linked, language servers skipped, ...)
        info = [line for line in seen if re.match(r"\[I \d{4}-", line)]
        assert not info, "".join(info)[:2000]
        # the printed URL is the usable one: the token opens the API
        api = f"http://127.0.0.1:{m.group(1)}/api/status?token={m.group(2)}"
        with urllib.request.urlopen(api, timeout=10) as r:
            assert r.status == 200
        # Ctrl-C (SIGINT to the foreground process group) stops Jupyter and make
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        with pytest.raises(OSError):
            urllib.request.urlopen(api, timeout=3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        busy.close()

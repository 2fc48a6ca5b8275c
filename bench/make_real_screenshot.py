"""The lab on real DeepLesion as most people hold it: a partial download.

Usage: .venv/bin/python bench/make_real_screenshot.py [--real ../shared/deeplesion_real]
       [--work DIR] [--out docs/img/real_viewer.png]

Runs, on the real files in ``--real`` (``DL_info_test.csv`` with the few key slices present
under ``Images_png``): ``manifest``, ``embed --present-only --channels context``, ``mine``,
``labels init`` and ``serve`` (loopback, no login), opens the served dashboard in headless
chromium (``/usr/bin/chromium``), clicks the first map point and saves the page with the slice
viewer showing the real key slice and its box. Prints each command's summary lines. The real
data is read, never copied; everything made goes under ``--work`` (a temporary folder).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from dashboard_fixtures import ServedDashboard  # noqa: E402

CLI = [sys.executable, "-m", "deeplesion_lab.cli"]


def step(args: list[str]) -> str:
    """Run one lab command; its output (a failure stops the script with it)."""
    t0 = time.perf_counter()
    res = subprocess.run(CLI + args, cwd=REPO, capture_output=True, text=True)
    out = (res.stdout + res.stderr).strip()
    if res.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({res.returncode}):\n{out}")
    print(f"$ deeplesion-lab {' '.join(args)}  ({time.perf_counter() - t0:.1f} s)")
    print("\n".join("  " + line for line in out.splitlines() if not line.startswith("  0%")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "deeplesion_real")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "real_viewer.png")
    args = ap.parse_args()
    if not (args.real / "DL_info_test.csv").is_file():
        raise SystemExit(f"{args.real}: no DL_info_test.csv (the real DeepLesion material)")
    work = args.work or Path(tempfile.mkdtemp(prefix="dl_real_"))
    man, run = work / "test.parquet", work / "run"
    step(["manifest", str(args.real / "DL_info_test.csv"), "--out", str(man)])
    step(["embed", str(man), "--run", str(run), "--present-only", "--channels", "context",
          "--epochs", "5", "--no-progress"])
    step(["mine", "--run", str(run), "--no-progress"])
    step(["labels", "init", "--run", str(run)])

    from playwright.sync_api import sync_playwright

    srv = ServedDashboard(run, None, work / "server.log", poll_ms=1000)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium",
                                  args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page(viewport={"width": 1720, "height": 1080})
            page.set_default_timeout(90_000)
            page.goto(srv.url + "/")
            page.wait_for_selector(".dlm-stage canvas")
            time.sleep(3)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            # the map, the slice viewer (the real key slice with its box) and the corrections
            page.screenshot(path=str(args.out), clip={"x": 0, "y": 0, "width": 1440, "height": 740})
            b.close()
    finally:
        srv.stop()
    print(f"wrote {args.out} (work in {work})")


if __name__ == "__main__":
    main()

"""Test material for the dashboard: a tiny run directory, a users file, a served dashboard.

The run: demo data from :func:`deeplesion_lab.demo.generate_demo` (4 patients, 256 px) when the
demo generator is installed, else a hand-written ``DL_info.csv`` with small synthetic slices
(written with :func:`deeplesion_lab.images.write_png16`). Either way the manifest is built by
:func:`deeplesion_lab.manifest.write_manifest`.

``embeddings.parquet``, ``umap.parquet`` and ``pseudo_labels.parquet`` are written HERE from
simple features (not by the ``embed`` / ``mine`` commands, to keep the tests fast and
independent of model training): each lesion's embedding is a noisy one-hot of its true coarse
type, the map is those types placed on a circle plus noise, the cluster is the type and the
pseudo-label the type name, except for every fifth lesion, which gets a wrong label on purpose
(so that there is something to correct).

:class:`ServedDashboard` runs ``python -m widgets.dashboard.server`` in a subprocess on a free
loopback port, as a user would, and stops it (by its own pid) afterwards.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from deeplesion_lab.lesion_types import COARSE_TYPES
from deeplesion_lab.run import RunDir

REPO = Path(__file__).resolve().parents[1]

#: name -> (role, password) of the test users.
USERS = {
    "ann": ("annotator", "ann-password-1"),
    "bob": ("annotator", "bob-password-1"),
    "vic": ("viewer", "vic-password-1"),
    "root": ("admin", "root-password-1"),
    "eve": ("annotator", "eve-password-1"),  # the lockout test locks her out
}

#: Annotators of the load test: ``(name, password)``.
LOAD_USERS = [(f"load{i:02d}", f"load-password-{i:02d}") for i in range(1, 11)]

#: A class name that is also HTML: it must be shown as text everywhere.
HTML_CLASS = "<img src=x onerror=alert(1)>"

_TYPES = list(COARSE_TYPES.values())


def _write_dl_info(out: Path, n_patients: int, size: int, seed: int) -> Path:
    """A small official-format DL_info.csv plus 3 slices per key image; returns the CSV."""
    from deeplesion_lab.dl_info import OFFICIAL_COLUMNS
    from deeplesion_lab.images import key_slice_path, slice_path, write_png16

    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((xx - size / 2) / (0.42 * size)) ** 2 + ((yy - size / 2) / (0.32 * size)) ** 2 < 1
    k = 0
    for p in range(1, n_patients + 1):
        for s in (1, 2):
            key = 20 + 3 * s
            fname = f"{p:06d}_{s:02d}_01_{key:03d}.png"
            boxes = []
            for _ in range(3):
                t = k % 8 + 1
                k += 1
                w, h = rng.uniform(8, 18), rng.uniform(6, 14)
                cx, cy = rng.uniform(0.3, 0.7) * size, rng.uniform(0.35, 0.65) * size
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                boxes.append((x1, y1, x2, y2))
                recist = [x1 + 2, cy, x2 - 2, cy, cx, y1 + 2, cx, y2 - 2]
                split = 3 if k % 3 == 0 else 1
                rows.append(
                    {
                        "File_name": fname,
                        "Patient_index": p,
                        "Study_index": s,
                        "Series_ID": 1,
                        "Key_slice_index": key,
                        "Measurement_coordinates": ", ".join(f"{v:.3f}" for v in recist),
                        "Bounding_boxes": f"{x1:.3f}, {y1:.3f}, {x2:.3f}, {y2:.3f}",
                        "Lesion_diameters_Pixel_": f"{x2 - x1 - 4:.3f}, {y2 - y1 - 4:.3f}",
                        "Normalized_lesion_location": f"{cx / size:.3f}, {cy / size:.3f}, 0.5",
                        "Coarse_lesion_type": t if split == 3 else -1,
                        "Possibly_noisy": 0,
                        "Slice_range": f"{key - 1}, {key + 1}",
                        "Spacing_mm_px_": "0.8, 0.8, 5",
                        "Image_size": f"{size}, {size}",
                        "DICOM_windows": "-175, 275",
                        "Patient_gender": "F" if p % 2 else "M",
                        "Patient_age": 40 + p,
                        "Train_Val_Test": split,
                        "_true_type": t,
                    }
                )
            for idx in (key - 1, key, key + 1):
                hu = np.where(body, 40, -1000).astype(np.int16)
                hu = hu + rng.normal(0, 8, hu.shape).astype(np.int16)
                for x1, y1, x2, y2 in boxes:
                    m = ((xx - (x1 + x2) / 2) / ((x2 - x1) / 2)) ** 2 + (
                        (yy - (y1 + y2) / 2) / ((y2 - y1) / 2)
                    ) ** 2 < 1
                    hu[m] = 120 + 10 * (idx - key)
                write_png16(slice_path(out / "Images_png", fname, idx), hu)
            assert key_slice_path(out / "Images_png", fname).is_file()
    df = pd.DataFrame(rows)
    df[list(OFFICIAL_COLUMNS)].to_csv(out / "DL_info.csv", index=False)
    df[["File_name", "_true_type"]].to_csv(out / "true_types.csv", index=False)
    return out / "DL_info.csv"


def make_run(root: Path, n_patients: int = 4, size: int = 256, seed: int = 0) -> Path:
    """A run directory (manifest, embeddings, UMAP, pseudo-labels) under ``root``; returns it."""
    from deeplesion_lab.manifest import read_manifest, write_manifest

    root = Path(root)
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    true_type = None
    try:
        from deeplesion_lab.demo import generate_demo
    except ImportError:
        generate_demo = None
    if generate_demo is not None:
        res = generate_demo(data_dir, n_patients=n_patients, seed=seed, size=size, progress=False)
        csv = Path(res.csv_path)
        truth = pd.read_parquet(res.truth_path)
        t = truth.dropna(subset=["lesion_id"])
        true_type = dict(zip(t["lesion_id"].astype(str), t["coarse_type"].astype(int), strict=True))
    else:
        csv = _write_dl_info(data_dir, n_patients, min(size, 128), seed)
    manifest = root / "manifest.parquet"
    write_manifest(csv, manifest)
    les = read_manifest(manifest)
    if true_type is None:
        tt = pd.read_csv(data_dir / "true_types.csv")
        by_file = tt.groupby("File_name")["_true_type"].apply(list).to_dict()
        types, seen = [], {}
        for f in les["file_name"]:
            i = seen.get(f, 0)
            seen[f] = i + 1
            types.append(int(by_file[f][i]))
    else:
        types = [true_type.get(str(lid), 1) for lid in les["lesion_id"]]
    types = np.asarray(types)
    run = RunDir(root / "run").init(manifest)
    rng = np.random.default_rng(seed)
    n = len(les)
    ids = les["lesion_id"].astype(str).to_numpy()
    emb = np.eye(8, dtype=np.float32)[types - 1] * 3 + rng.normal(0, 0.4, (n, 8)).astype(np.float32)
    run.save_embeddings(ids, emb)
    ang = (types - 1) / 8 * 2 * np.pi
    pd.DataFrame(
        {
            "lesion_id": ids,
            "x": np.cos(ang) * 5 + rng.normal(0, 0.6, n),
            "y": np.sin(ang) * 5 + rng.normal(0, 0.6, n),
        }
    ).to_parquet(run.umap, index=False)
    labels = np.array([_TYPES[t - 1] for t in types], dtype=object)
    wrong = np.arange(n) % 5 == 4
    labels[wrong] = [_TYPES[t % 8] for t in types[wrong]]
    pd.DataFrame(
        {
            "lesion_id": ids,
            "cluster": (types - 1).astype(np.int64),
            "label": labels,
            "confidence": np.where(wrong, 0.4, 0.9),
        }
    ).to_parquet(run.pseudo_labels, index=False)
    run.update_metrics({"embedding": {"knn_accuracy": 0.75}, "mining": {"n_clusters": 8}})
    return run.path


def cached_run(cache_root: Path) -> Path:
    """:func:`make_run` once per test session under ``cache_root`` (the pytest base temp)."""
    cache = Path(cache_root) / "dashboard-run-cache"
    done = cache / "complete"
    if not done.is_file():
        if cache.exists():
            shutil.rmtree(cache)
        make_run(cache)
        done.write_text("ok\n")
    return cache / "run"


def fresh_run(dest: Path, cache_root: Path) -> Path:
    """A copy of the cached run without a label store (each test module starts clean)."""
    src = cached_run(cache_root)
    dst = Path(dest) / "run"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("labels.sqlite*", "dashboard"))
    return dst


def make_users(path: Path, load: bool = False) -> Path:
    """The users file with :data:`USERS` (and :data:`LOAD_USERS`), hashed passwords."""
    from widgets.dashboard.auth import add_user

    for name, (role, pw) in USERS.items():
        add_user(path, name, role, pw)
    for name, pw in LOAD_USERS if load else []:
        add_user(path, name, "annotator", pw)
    return Path(path)


def check_load(result, run_dir: Path) -> dict:
    """Assert what a load run must show; returns the store's counts for the report.

    Every session held to the end, no client error, every acknowledged relabel is in the store
    (its event, user, comment and label), every acknowledged undo too, the store's log replays
    to its current labels, and every session shows the same colours as a fresh one.
    """
    from deeplesion_lab.labels import LabelStore

    assert result.errors == [], result.errors
    assert result.held == result.sessions, f"{result.held}/{result.sessions} sessions held"
    relabels = [a for a in result.acks if a.op == "relabel"]
    assert relabels, "no change was acknowledged"
    store = LabelStore.open(Path(run_dir) / "labels.sqlite")
    try:
        ev = store.events().set_index("event_id")
        hist = store.history()
        for a in relabels:
            assert a.event_id in ev.index, f"acknowledged event {a.event_id} missing"
            row = ev.loc[a.event_id]
            assert (row["user"], row["comment"], row["op"]) == (a.user, a.comment, "relabel"), a
            labels = set(hist.loc[hist["event_id"] == a.event_id, "label_after"])
            assert labels <= {a.label}, (a, labels)
        undos = [a for a in result.acks if a.op == "undo"]
        for user in {a.user for a in undos}:
            n_store = int(((ev["user"] == user) & (ev["op"] == "undo")).sum())
            assert n_store >= sum(1 for a in undos if a.user == user), user
        check = store.verify()
        assert check["replay_matches"] and check["integrity"] == "ok", check
        counts = {"events": int(len(ev)), "relabels_acked": len(relabels), "undos_acked": len(undos)}
    finally:
        store.close()
    assert result.final_codes_agree, "a session does not show the others' changes"
    return counts


# a served dashboard ------------------------------------------------------------------------------
class ServedDashboard:
    """``python -m widgets.dashboard.server`` in a subprocess on a free loopback port.

    Parameters
    ----------
    run_dir, users : pathlib.Path
        The run and the users file (None: loopback without login).
    log_path : pathlib.Path
        Where the server's output goes.
    """

    def __init__(self, run_dir: Path, users: Path | None, log_path: Path, poll_ms: int = 400,
                 extra: list[str] | None = None):
        from widgets.dashboard.server import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        cmd = [
            sys.executable, "-m", "widgets.dashboard", "--run", str(run_dir),
            "--port", str(self.port), "--address", "127.0.0.1", "--poll-ms", str(poll_ms),
        ]  # fmt: skip
        if users is not None:
            cmd += ["--users", str(users)]
        cmd += extra or []
        env = dict(os.environ, PYTHONUNBUFFERED="1", BOKEH_RESOURCES="server")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/login", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError:
                return  # answering (e.g. no login page in loopback mode)
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"dashboard not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http_client(follow_redirects: bool = False):
    """``(opener, cookie_jar)``: a urllib client keeping cookies."""
    jar = http.cookiejar.CookieJar()
    handlers: list = [urllib.request.HTTPCookieProcessor(jar)]
    if not follow_redirects:
        handlers.append(_NoRedirect())
    return urllib.request.build_opener(*handlers), jar


def request(opener, url: str, data: dict | None = None):
    """``(status, headers, body text)``; HTTP errors are returned, not raised."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(url, data=body, timeout=20) as r:
            return r.status, r.headers, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode("utf-8", "replace")


def login(base_url: str, user: str, password: str | None = None):
    """Log in over HTTP; returns ``(opener, jar)`` holding the signed cookie."""
    opener, jar = http_client()
    pw = USERS[user][1] if password is None else password
    status, headers, body = request(
        opener, base_url + "/login", {"username": user, "password": pw, "next": "/"}
    )
    if status != 302:
        raise AssertionError(f"login of {user} failed: {status} {re.sub(r'<[^>]+>', ' ', body)[:300]}")
    return opener, jar


def login_from(base_url: str, source: str, user: str, password: str) -> int:
    """``POST /login`` from a chosen loopback source address (``127.0.0.2``...); the status."""
    import http.client

    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20,
                                      source_address=(source, 0))
    body = urllib.parse.urlencode({"username": user, "password": password, "next": "/"})
    conn.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
    status = conn.getresponse().status
    conn.close()
    return status

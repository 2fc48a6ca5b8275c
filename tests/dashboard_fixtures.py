"""Test material for the dashboard: a tiny run directory, a users file, a served dashboard.

The run: demo data from :func:`deeplesion_lab.demo.generate_demo` (4 patients, 256 px); the
manifest is built by :func:`deeplesion_lab.manifest.write_manifest`.

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

def make_run(root: Path, n_patients: int = 4, size: int = 256, seed: int = 0) -> Path:
    """A run directory (manifest, embeddings, UMAP, pseudo-labels) under ``root``; returns it."""
    from deeplesion_lab.manifest import read_manifest, write_manifest

    root = Path(root)
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    from deeplesion_lab.demo import generate_demo

    res = generate_demo(data_dir, n_patients=n_patients, seed=seed, size=size, progress=False)
    truth = pd.read_parquet(res.truth_path)
    t = truth.dropna(subset=["lesion_id"])
    true_type = dict(zip(t["lesion_id"].astype(str), t["coarse_type"].astype(int), strict=True))
    manifest = root / "manifest.parquet"
    write_manifest(Path(res.csv_path), manifest)
    les = read_manifest(manifest)
    types = np.asarray([true_type[str(lid)] for lid in les["lesion_id"]])
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
        ]
        if users is not None:
            cmd += ["--users", str(users)]
        cmd += extra or []
        env = dict(os.environ, PYTHONUNBUFFERED="1", BOKEH_RESOURCES="server")
        self._log = open(self.log_path, "w")  # closed in stop()
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

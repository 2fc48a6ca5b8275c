"""Users file, password hashing, lockout and login pages of the dashboard (no server needed)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from widgets.dashboard.auth import (
    PERMISSIONS,
    AuthError,
    LoginThrottle,
    User,
    UserFile,
    add_user,
    generate_cookie_secret,
    hash_password,
    render_login_page,
    safe_next_url,
    verify_password,
)
from widgets.dashboard.server import LoginRequired, is_loopback, make_server


def test_hash_roundtrip_and_salt():
    h1 = hash_password("correct horse", iterations=1000)
    h2 = hash_password("correct horse", iterations=1000)
    assert h1 != h2, "each hash has its own salt"
    assert "correct horse" not in h1
    assert verify_password("correct horse", h1) and verify_password("correct horse", h2)
    assert not verify_password("correct hors", h1)
    assert not verify_password("", h1)
    for bad in ("", "md5$1$x$y", "pbkdf2_sha256$notanint$AA==$AA==", "pbkdf2_sha256$10$%%%$AA=="):
        assert verify_password("x", bad) is False


def test_add_user_writes_hashes_only_and_private_file(tmp_path):
    f = tmp_path / "users.json"
    add_user(f, "alice", "annotator", "s3cret-pass")
    add_user(f, "bob", "viewer", "another-pass")
    text = f.read_text()
    assert "s3cret-pass" not in text and "another-pass" not in text
    assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, "users file readable by others"
    users = UserFile(f)
    assert users.names() == ["alice", "bob"]
    assert users.authenticate("alice", "s3cret-pass") == User("alice", "annotator")
    assert users.authenticate("alice", "wrong") is None
    assert users.authenticate("nobody", "s3cret-pass") is None
    # updating a user changes the role; UserFile re-reads the changed file
    add_user(f, "bob", "admin", "another-pass")
    assert users.get("bob") == User("bob", "admin")


@pytest.mark.parametrize(
    ("name", "role", "pw", "msg"),
    [
        ("al ice", "annotator", "longenough", "invalid user name"),
        ("", "annotator", "longenough", "invalid user name"),
        ("alice", "superuser", "longenough", "unknown role"),
        ("alice", "viewer", "short", "at least 8"),
    ],
)
def test_add_user_rejects_bad_input(tmp_path, name, role, pw, msg):
    f = tmp_path / "users.json"
    with pytest.raises(AuthError, match=msg):
        add_user(f, name, role, pw)
    assert not f.exists(), "nothing written on bad input"


def test_users_file_errors_name_file_user_and_field(tmp_path):
    f = tmp_path / "users.json"
    f.write_text(json.dumps({"users": {"eve": {"role": "admin", "password": "plaintext!"}}}))
    with pytest.raises(AuthError) as e:
        UserFile(f)
    assert str(f) in str(e.value) and "'eve'" in str(e.value) and "'password'" in str(e.value)
    f.write_text(json.dumps({"users": {"eve": {"role": "god", "password": hash_password("x" * 8)}}}))
    with pytest.raises(AuthError, match="unknown role 'god'"):
        UserFile(f)
    f.write_text("{not json")
    with pytest.raises(AuthError, match="not valid JSON"):
        UserFile(f)
    with pytest.raises(AuthError, match="users file not found"):
        UserFile(tmp_path / "missing.json")


def test_roles_permissions():
    assert not User("v", "viewer").can("relabel")
    assert User("a", "annotator").can("relabel") and not User("a", "annotator").can("snapshot")
    assert User("r", "admin").can("snapshot") and User("r", "admin").can("finetune")
    assert PERMISSIONS["viewer"] < PERMISSIONS["annotator"] < PERMISSIONS["admin"]


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_throttle_locks_out_after_repeated_failures():
    clock = FakeClock()
    th = LoginThrottle(max_failures=3, window_s=60, lockout_s=120, clock=clock)
    keys = ("user:alice", "ip:10.0.0.1")
    for _ in range(2):
        th.failure(*keys)
        assert th.locked_for(*keys) == 0
    th.failure(*keys)
    assert th.locked_for("user:alice") == pytest.approx(120)
    assert th.locked_for("ip:10.0.0.1") == pytest.approx(120)
    assert th.locked_for("user:bob") == 0
    clock.t += 119
    assert th.locked_for(*keys) == pytest.approx(1)
    clock.t += 2
    assert th.locked_for(*keys) == 0


def test_throttle_window_and_success_reset():
    clock = FakeClock()
    th = LoginThrottle(max_failures=3, window_s=60, lockout_s=120, clock=clock)
    th.failure("user:a")
    th.failure("user:a")
    clock.t += 61  # those two fall out of the window
    th.failure("user:a")
    assert th.locked_for("user:a") == 0
    th.failure("user:a")
    th.success("user:a")
    th.failure("user:a")
    assert th.locked_for("user:a") == 0


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("/", True),
        ("/?tab=history", True),
        ("//evil.example/", False),
        ("http://evil.example/", False),
        ("javascript:alert(1)", False),
        ("/\\evil.example", False),
        ("", False),
    ],
)
def test_safe_next_url(url, ok):
    assert (safe_next_url(url) == url) is ok


def test_login_page_escapes_everything():
    page = render_login_page("/login", error="<script>x()</script>", next_url='/"><img src=x>')
    assert "<script>x()" not in page and "&lt;script&gt;" in page
    assert '"><img' not in page
    assert "http://" not in page and "https://" not in page, "the login page loads nothing external"


def test_cookie_secret_is_random_and_long():
    a, b = generate_cookie_secret(), generate_cookie_secret()
    assert a != b and len(a) >= 32


def test_login_required_beyond_loopback(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("")
    # refused before anything is read or served: the run directory does not even exist
    with pytest.raises(LoginRequired, match="--users"):
        make_server(tmp_path / "no-run", address="0.0.0.0", port=0, quiet=True)


def test_cli_add_user_from_stdin(tmp_path):
    """``serve --add-user`` through the module entry point, password on stdin."""
    f = tmp_path / "u.json"
    cmd = [sys.executable, "-m", "widgets.dashboard", "--users", str(f),
           "--add-user", "carol", "--role", "viewer"]
    r = subprocess.run(cmd, input="carol-password\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert UserFile(f).authenticate("carol", "carol-password") == User("carol", "viewer")
    r = subprocess.run(cmd, input="short\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "at least 8" in r.stderr

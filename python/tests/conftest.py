"""Fixtures of the Python package's tests: real servers (the repository's
AIStore-style test server, s3s-fs) on loopback, and a leak check after each
test (no shmfetch segment left in /dev/shm)."""

import gc
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
S3_ACCESS_KEY = "shmfetch-test-ak"
S3_SECRET_KEY = "shmfetch-test-secret-key"


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def segments():
    return {n for n in os.listdir("/dev/shm") if n.startswith("shmfetch-")}


def worker_pids():
    """Worker processes forked by this process."""
    me = os.getpid()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if int(fields[1]) == me and comm == "shmfetch-wrk":
            out.append(int(pid))
    return out


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = segments()
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    while segments() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = segments() - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"


def pytest_sessionfinish(session, exitstatus):
    import shmfetch

    shmfetch.close_default_pools()
    gc.collect()
    deadline = time.monotonic() + 10
    while worker_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = worker_pids()
    if left:
        print(f"\nFAIL: worker processes left: {left}")
        session.exitstatus = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, what, log=None, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = Path(log).read_text() if log else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s")


class AisServer:
    """The repository's AIStore-style test server (examples/test_server.rs)."""

    def __init__(self, *args):
        binary = os.environ.get("SHMFETCH_TEST_SERVER", str(REPO / "target" / "debug" / "examples" / "test_server"))
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: cargo build --example test_server --features test-support")
        self.proc = subprocess.Popen(
            [binary, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        first = self.proc.stdout.readline().split()
        assert first and first[0] == "endpoint", f"test server said {first}"
        self.endpoint = first[1]

    def _ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def bucket(self, name):
        assert self._ask(f"bucket {name}") == "ok"

    def requests(self):
        return json.loads(self._ask("requests"))

    def close(self):
        try:
            self._ask("quit")
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def ais(monkeypatch):
    server = AisServer()
    monkeypatch.setenv("AIS_ENDPOINT", server.endpoint)
    yield server
    server.close()


def s3s_fs_binary():
    found = shutil.which("s3s-fs")
    if found:
        return found
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    path = os.path.join(cargo_home, "bin", "s3s-fs")
    if os.access(path, os.X_OK):
        return path
    pytest.fail("s3s-fs is not installed (scripts/test.sh installs it)")


class S3sFs:
    """s3s-fs, a file-backed S3 server that checks SigV4, on loopback."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="shmfetch-py-s3s-")
        self.root = os.path.join(self.dir, "root")
        os.mkdir(self.root)
        self.port = free_port()
        self.log = os.path.join(self.dir, "s3s-fs.log")
        out = open(self.log, "w")
        self.proc = subprocess.Popen(
            [s3s_fs_binary(), "--host", "127.0.0.1", "--port", str(self.port),
             "--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY, self.root],
            stdout=out, stderr=out, env={**os.environ, "RUST_LOG": "warn"},
        )
        out.close()
        wait_for_port(self.port, self.proc, "s3s-fs", self.log)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def bucket(self, name):
        os.makedirs(os.path.join(self.root, name), exist_ok=True)

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def s3s(monkeypatch):
    server = S3sFs()
    for k in ["AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"]:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    yield server
    server.close()

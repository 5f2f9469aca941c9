"""ParallelReader from Python: zero-copy buffers, iteration, streams,
errors, interrupts and forks, against local files and the AIStore-style
test server."""

import gc
import os
import re
import signal
import subprocess
import threading
import time
import warnings

import numpy
import pytest
import torch

import shmfetch
from conftest import AisServer, sha256, segments

MiB = 1 << 20


@pytest.fixture
def obj(tmp_path):
    data = numpy.random.default_rng(7).integers(0, 256, 24 * MiB + 12345, dtype=numpy.uint8).tobytes()
    path = tmp_path / "obj.bin"
    path.write_bytes(data)
    return path, data


def mapping_of(address):
    """The /proc/self/maps line whose range holds `address`."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line.strip()
    return None


def rss_anon_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_read_all_is_a_view_of_the_segment(obj):
    path, data = obj
    r = shmfetch.ParallelReader(str(path), workers=4, chunk_size=MiB)
    assert r.size == len(data)
    anon_before = rss_anon_kib()
    with r.read_all() as buf:
        assert len(buf) == len(data)
        a = numpy.frombuffer(buf, dtype=numpy.uint8)
        assert sha256(a) == sha256(data)
        # The view is the segment: same address, inside the mapping of
        # /dev/shm/<segment>, and no private copy of the object was made.
        assert a.ctypes.data == buf.address
        line = mapping_of(a.ctypes.data)
        assert line is not None and line.endswith("/dev/shm/" + buf.segment_name), line
        assert (rss_anon_kib() - anon_before) * 1024 < len(data) // 4
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # writable: no "non-writable tensor" warning
            t = torch.frombuffer(buf, dtype=torch.uint8)
        assert t.data_ptr() == buf.address
        assert sha256(t.numpy()) == sha256(data)
        del a, t
    assert buf.released


def test_views_keep_the_memory_until_the_last_is_gone(obj):
    path, data = obj
    r = shmfetch.ParallelReader(str(path), workers=2)
    buf = r.read_all()
    name = buf.segment_name
    a = numpy.frombuffer(buf, dtype=numpy.uint8)
    buf.release()
    assert buf.released
    # Still valid: release is deferred while a view exists.
    assert sha256(a) == sha256(data)
    with pytest.raises(BufferError):
        memoryview(buf)
    del a
    gc.collect()
    assert name not in segments()


def test_exception_inside_with_frees_the_segment(obj):
    path, _ = obj
    r = shmfetch.ParallelReader(str(path), workers=2)
    with pytest.raises(ZeroDivisionError):
        with r.read_all() as buf:
            name = buf.segment_name
            assert name in segments()
            1 / 0
    assert name not in segments()


def test_read_range(obj):
    path, data = obj
    r = shmfetch.ParallelReader(str(path), workers=3, chunk_size=MiB)
    with r.read_range(5 * MiB + 3, 3 * MiB) as buf:
        assert bytes(buf) == data[5 * MiB + 3 : 8 * MiB + 3]
        assert buf.offset == 5 * MiB + 3
    with pytest.raises(shmfetch.InvalidConfig):
        r.read_range(len(data) + 1)


def test_create_iter_in_order(obj):
    path, data = obj
    r = shmfetch.ParallelReader(str(path), workers=4, chunk_size=MiB)
    offsets, got = [], []
    for chunk in r.create_iter(offset=1000):
        offsets.append(chunk.offset)
        got.append(bytes(chunk))
        with pytest.raises(TypeError):  # a ring slot is read-only
            memoryview(chunk).cast("B")[0:1] = b"x"
    assert offsets == sorted(offsets) and offsets[0] == 1000
    assert sha256(b"".join(got)) == sha256(data[1000:])


def test_holding_every_slot_is_an_error_not_a_hang(obj):
    path, _ = obj
    r = shmfetch.ParallelReader(str(path), workers=2, chunk_size=MiB)
    it = r.create_iter(0)
    held = [next(it), next(it)]
    with pytest.raises(shmfetch.Error):
        next(it)
    del held
    it.close()


def test_stream_readinto(obj):
    path, data = obj
    r = shmfetch.ParallelReader(str(path), workers=4, chunk_size=MiB)
    f = r.stream(offset=0)
    import io

    assert isinstance(f, io.RawIOBase)
    out = bytearray()
    b = bytearray(300_001)
    while n := f.readinto(b):
        out += b[:n]
    f.close()
    assert sha256(out) == sha256(data)
    with r.stream(len(data) - 10) as g:
        assert g.read() == data[-10:]


def test_ais_server_reads(ais):
    from shmfetch.dcp import FileSystem

    ais.bucket("b")
    data = os.urandom(9 * MiB + 7)
    with FileSystem().create_stream("ais://b/dir/obj", "wb") as f:
        f.write(data)
    r = shmfetch.ParallelReader("ais://b/dir/obj", workers=4, chunk_size=MiB)
    with r.read_all() as buf:
        assert sha256(buf) == sha256(data)
    assert sha256(b"".join(bytes(c) for c in r.create_iter())) == sha256(data)
    ranged = [q for q in ais.requests() if q["method"] == "GET" and q["range"]]
    assert len(ranged) >= 20


def test_error_classes(tmp_path, ais):
    ais.bucket("b")
    cases = [
        (lambda: shmfetch.ParallelReader(str(tmp_path / "missing")), shmfetch.ObjectNotFound, FileNotFoundError),
        (lambda: shmfetch.ParallelReader("ais://b/missing"), shmfetch.ObjectNotFound, FileNotFoundError),
        (lambda: shmfetch.ParallelReader("ais://nobucket/x"), shmfetch.BucketNotFound, FileNotFoundError),
        (lambda: shmfetch.ParallelReader("ais://bucket-only"), shmfetch.InvalidSource, ValueError),
        (lambda: shmfetch.ParallelReader("ais://b/x", endpoint="ftp://x"), shmfetch.InvalidConfig, ValueError),
        (lambda: shmfetch.ParallelReader(__file__, chunk_size=1), shmfetch.InvalidConfig, ValueError),
        (lambda: shmfetch.ParallelReader(__file__, workers=0), shmfetch.InvalidConfig, ValueError),
        (lambda: shmfetch.ParallelReader(__file__, attempts=0), shmfetch.InvalidConfig, ValueError),
        (lambda: shmfetch.WorkerPool(10_000), shmfetch.InvalidConfig, ValueError),
        (lambda: shmfetch.ParallelReader(__file__, addressing_style="sideways"), shmfetch.Error, ValueError),
    ]
    for make, cls, builtin in cases:
        with pytest.raises(cls) as e:
            make()
        assert isinstance(e.value, shmfetch.Error) and isinstance(e.value, builtin)
        assert str(e.value)
    with pytest.raises(TypeError):
        shmfetch.ParallelReader(123)


def test_access_denied_on_a_wrong_s3_secret(s3s, monkeypatch):
    s3s.bucket("bkt")
    with open(os.path.join(s3s.root, "bkt", "k"), "wb") as f:
        f.write(b"x" * 1000)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(shmfetch.AccessDenied) as e:
        shmfetch.ParallelReader("s3://bkt/k")
    assert isinstance(e.value, PermissionError)
    monkeypatch.undo()


def test_object_changed_while_reading(tmp_path):
    path = tmp_path / "changing"
    path.write_bytes(b"a" * (4 * MiB))
    r = shmfetch.ParallelReader(str(path), workers=2)
    time.sleep(0.05)
    path.write_bytes(b"b" * (4 * MiB))
    os.utime(path, (time.time() + 5, time.time() + 5))
    with pytest.raises(shmfetch.ObjectChanged):
        r.read_all()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_shm_no_space(tmp_path, obj):
    path, _ = obj
    small = tmp_path / "small-shm"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = shmfetch.ParallelReader(str(path), workers=2, shm_dir=str(small))
        with pytest.raises(shmfetch.ShmNoSpace) as e:
            r.read_all()
        assert isinstance(e.value, shmfetch.ShmError)
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)])


def test_pool_explicit_and_closed(obj):
    path, data = obj
    with shmfetch.WorkerPool(3) as pool:
        assert len(pool.worker_pids) == 3
        r = shmfetch.ParallelReader(str(path), pool=pool)
        assert r.workers == 3
        with pytest.raises(shmfetch.InvalidConfig):
            shmfetch.ParallelReader(str(path), pool=pool, workers=5)
        with r.read_all() as buf:
            assert sha256(buf) == sha256(data)
    with pytest.raises(shmfetch.PoolError):
        shmfetch.ParallelReader(str(path), pool=pool)


def test_used_after_fork_is_a_clear_error(obj):
    path, _ = obj
    r = shmfetch.ParallelReader(str(path), workers=2)
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        try:
            r.read_all()
            msg = b"no error"
        except shmfetch.PoolError as e:
            msg = str(e).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            msg = repr(e).encode()
        os.write(wr, msg)
        os._exit(0)
    os.close(wr)
    msg = os.read(rd, 4096).decode()
    os.close(rd)
    os.waitpid(pid, 0)
    assert "os.fork()" in msg, msg
    # The parent's reader still works.
    with r.read_all() as buf:
        assert len(buf) == r.size


@pytest.fixture
def slow_ais():
    server = AisServer("--rate", str(2 * MiB))
    server.bucket("b")
    yield server
    server.close()


def slow_object(server):
    from shmfetch.dcp import FileSystem

    data = os.urandom(24 * MiB)
    with FileSystem(endpoint=server.endpoint).create_stream("ais://b/slow", "wb") as f:
        f.write(data)
    return data


def test_gil_is_released_while_bytes_move(slow_ais):
    slow_object(slow_ais)
    r = shmfetch.ParallelReader("ais://b/slow", workers=4, chunk_size=MiB, endpoint=slow_ais.endpoint)
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    start = time.monotonic()
    with r.read_all():
        pass
    took = time.monotonic() - start
    stop.set()
    t.join()
    assert took > 1.0
    assert ticks > took * 100, (ticks, took)


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test.

    Found when the suite ran as a background job (``cmd &``, nohup, as CI
    scripts often start it): such a process inherits SIGINT ignored, Python
    then leaves it ignored, and the Ctrl-C test failed with "DID NOT RAISE"
    although the download honoured every signal Python saw.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_stops_read_all_and_frees_everything(slow_ais, python_sigint):
    slow_object(slow_ais)
    r = shmfetch.ParallelReader("ais://b/slow", workers=2, chunk_size=MiB, endpoint=slow_ais.endpoint)
    before = segments()
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        r.read_all()
    assert time.monotonic() - start < 3
    gc.collect()
    assert segments() <= before
    # The pool is still usable afterwards.
    with r.read_range(0, MiB) as buf:
        assert len(buf) == MiB


def test_help_reads_well():
    doc = shmfetch.ParallelReader.__doc__
    assert "ais://" in doc and "read_all" in doc
    assert re.search(r"buffer protocol", shmfetch.ParallelReader.read_all.__doc__)


class _Misbehaving:
    """A small HTTP server (http.server, in a thread) that answers HEAD
    with a size and every GET with one chosen mistake."""

    def __init__(self, mistake):
        import http.server

        size = 1 << 20
        body = bytes(range(256)) * (size // 256)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                if mistake == "500":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"v1"')
                self.end_headers()

            def do_GET(self):
                m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                start, end = (int(m.group(1)), int(m.group(2))) if m else (0, size - 1)
                part = body[start : end + 1]
                self.send_response(206)
                shift = 1 if mistake == "wrong-range" else 0
                self.send_header("Content-Range", f"bytes {start + shift}-{end + shift}/{size}")
                self.send_header("Content-Length", str(len(part)))
                self.send_header("ETag", '"v1"')
                self.end_headers()
                if mistake == "short":
                    self.wfile.write(part[: len(part) // 2])
                    self.close_connection = True
                else:
                    self.wfile.write(part)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/obj"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "mistake, cls",
    [("500", "HttpError"), ("wrong-range", "RangeMismatch"), ("short", "ShortRead")],
)
def test_server_mistakes_raise_their_class(mistake, cls):
    srv = _Misbehaving(mistake)
    try:
        with pytest.raises(getattr(shmfetch, cls)) as e:
            r = shmfetch.ParallelReader(srv.url, workers=2, chunk_size=256 << 10, attempts=1, retry_timeout=0)
            r.read_all()
        assert isinstance(e.value, shmfetch.Error) and str(e.value)
    finally:
        srv.close()


def test_a_refused_connection_is_a_transport_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(shmfetch.TransportError) as e:
        shmfetch.ParallelReader(f"http://127.0.0.1:{port}/x", attempts=1, retry_timeout=0)
    assert isinstance(e.value, ConnectionError)


def test_a_corrupt_checkpoint_item_is_a_checkpoint_error(tmp_path):
    from shmfetch.dcp import FileSystem

    path = tmp_path / "not-a-zip.distcp"
    path.write_bytes(os.urandom(4096))
    with FileSystem().create_stream(str(path), "rb") as f:
        with pytest.raises(shmfetch.CheckpointError) as e:
            f.read_tensor(0, 4096, "not-a-zip.distcp item x")
    assert "not-a-zip.distcp item x" in str(e.value)

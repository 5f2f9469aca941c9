"""shmfetch.dcp with real torch.distributed.checkpoint save/load: 2-rank
gloo runs on local paths, the AIStore-style test server and s3s-fs; empty
load plans; selective loads fetching only the planned byte ranges; the
repository's PyTorch-written fixture; error behaviour of FileSystem."""

import datetime
import io
import json
import math
import os
import re
import socket
import struct
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as tmp

from shmfetch.dcp import FileSystem, HexPrefixStrategy, ReaderConstructor, StorageReader, StorageWriter

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "dcp-small"
TRUTH = REPO / "tests" / "fixtures" / "dcp-small.truth"

WORLD = 2
SPAWN_TIMEOUT = 90
ENV_KEYS = ("AIS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


# ---------------------------------------------------------------- helpers


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reader_constructor(kind):
    return {
        "sequential": lambda: ReaderConstructor.sequential(),
        "range_based": lambda: ReaderConstructor.range_based(),
        "range_based(0)": lambda: ReaderConstructor.range_based(buffer_size=0),
        "dcp_optimized": lambda: ReaderConstructor.dcp_optimized(),
        "dcp_optimized(0)": lambda: ReaderConstructor.dcp_optimized(0),
    }[kind]()


def _spawn(fn, args, timeout=SPAWN_TIMEOUT):
    """Runs fn(rank, *args) in WORLD spawned processes; a child's exception
    fails the caller (with the child's traceback), so does a hang."""
    ctx = tmp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"spawned ranks did not finish within {timeout}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)


def _full_tensors():
    """Every tensor of the test state dict, whole, deterministic."""
    g = torch.Generator().manual_seed(20240611)
    return {
        # DTensors: row shard (uneven 4 + 3 rows), column shard (5 + 4 columns).
        "dt.row": torch.randn(7, 5, generator=g),
        "dt.col": torch.randn(6, 9, generator=g).to(torch.bfloat16),
        "optim.state.dt.row.exp_avg": torch.randn(7, 5, generator=g).double(),
        "p.bf16": torch.randn(33, 17, generator=g).to(torch.bfloat16),
        "p.f16": torch.randn(100, generator=g).half(),
        "p.f32": torch.randn(96, 64, generator=g),
        "p.f64": torch.randn(5, 3, 2, generator=g).double(),
        "p.i32": torch.randint(-(2**31), 2**31 - 1, (50,), generator=g, dtype=torch.int32),
        "p.i64": torch.randint(-(2**62), 2**62, (20,), generator=g, dtype=torch.int64),
        "p.bool": torch.randint(0, 2, (31,), generator=g).bool(),
        "p.f8": (torch.randn(40, generator=g) * 4).to(torch.float8_e4m3fn),
        "p.scalar": torch.tensor(3.25, dtype=torch.float64),
        "p.empty": torch.empty(0, 4),
    }


_PLACEMENT_DIM = {"dt.row": 0, "dt.col": 1, "optim.state.dt.row.exp_avg": 0}


def _objects(blank=False):
    """The non-tensor items (bytes items once saved); ``blank``: the same
    structure with placeholder values, to load into."""
    if blank:
        return {
            "optim": {"param_groups": [{"lr": 0.0, "betas": [], "params": [], "name": ""}], "step": 0},
            "blob": io.BytesIO(),
            "note": "",
            "raw": b"",
        }
    return {
        "optim": {"param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "params": [0, 1], "name": "adamw-ß"}], "step": 17},
        "blob": io.BytesIO(bytes(range(256)) * 3),
        "note": "héllo",
        "raw": b"\x00\x01binary\xff",
    }


def _state_dict(mesh, blank=False):
    """The state dict a rank saves (``blank``: zeros of the same layout)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    tensors = _full_tensors()
    if blank:
        tensors = {k: torch.zeros_like(v) for k, v in tensors.items()}
    sd = {"dt": {}, "p": {}}
    for k, v in tensors.items():
        if k in _PLACEMENT_DIM:
            v = distribute_tensor(v, mesh, [Shard(_PLACEMENT_DIM[k])])
        if k.startswith("optim."):
            continue
        sd[k.split(".")[0]][k.split(".", 1)[1]] = v
    objs = _objects(blank)
    objs["optim"]["state"] = {
        "dt.row": {
            "exp_avg": distribute_tensor(tensors["optim.state.dt.row.exp_avg"], mesh, [Shard(0)])
        }
    }
    sd.update(objs)
    return sd


def _snapshot(sd):
    """What a rank loaded, as plain picklable values: DTensors both whole
    (full_tensor, a collective) and as this rank's local shard."""
    from torch.distributed.tensor import DTensor

    full, local = {}, {}
    for k in ("dt.row", "dt.col"):
        t = sd["dt"][k.split(".", 1)[1]]
        assert isinstance(t, DTensor), type(t)
        full[k], local[k] = t.full_tensor(), t.to_local().clone()
    t = sd["optim"]["state"]["dt.row"]["exp_avg"]
    full["optim.state.dt.row.exp_avg"], local["optim.state.dt.row.exp_avg"] = t.full_tensor(), t.to_local().clone()
    for k, v in sd["p"].items():
        full["p." + k] = v
    objs = {k: sd[k] for k in ("note", "raw")}
    objs["blob"] = sd["blob"].getvalue() if isinstance(sd["blob"], io.BytesIO) else sd["blob"]
    objs["optim"] = {k: v for k, v in sd["optim"].items() if k != "state"}
    return {"full": full, "local": local, "objects": objs}


def _assert_same_tensor(got, want, what):
    assert isinstance(got, torch.Tensor), f"{what}: got {type(got)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if want.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        got, want = got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)
    assert torch.equal(got, want), f"{what}: values differ"


def _check_snapshot(snap, rank, what):
    want = _full_tensors()
    assert set(snap["full"]) == set(want), what
    for k, v in want.items():
        _assert_same_tensor(snap["full"][k], v, f"{what} {k}")
    for k, dim in _PLACEMENT_DIM.items():
        _assert_same_tensor(snap["local"][k], want[k].chunk(WORLD, dim)[rank], f"{what} {k} local shard of rank {rank}")
    objs = _objects()
    assert snap["objects"] == {
        "optim": objs["optim"],
        "blob": objs["blob"].getvalue(),
        "note": objs["note"],
        "raw": objs["raw"],
    }, what


def _rank_main(rank, port, env, root, kinds, out_dir, thread_count, empty_plan):
    """One rank: save with StorageWriter, load with StorageReader for each
    reader kind, write what was loaded to out_dir for the parent to check."""
    os.environ.update(env)
    warnings.filterwarnings("ignore")
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import shmfetch

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        # After init_process_group: a strategy built before would not know the rank count.
        strategy = HexPrefixStrategy(prefix_count=2)
        writer = StorageWriter(root, prefix_strategy=strategy, thread_count=thread_count)
        dcp.save(_state_dict(mesh), storage_writer=writer)
        dist.barrier()
        results = {"kinds": {}, "stats": {}}
        for kind in kinds:
            sd = _state_dict(mesh, blank=True)
            reader = StorageReader(root, reader_constructor=_reader_constructor(kind))
            dcp.load(sd, storage_reader=reader)
            results["kinds"][kind] = _snapshot(sd)
            results["stats"][kind] = (reader.fs.reader_kind, reader.fs.requests, reader.fs.bytes_fetched)
        if empty_plan:
            results["empty_plan"] = _empty_plan_load(rank, root)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
        shmfetch.close_default_pools()


class _CountingReader(StorageReader):
    """Records the plan size and what the file system fetched during
    read_data (after the metadata was read)."""

    def read_data(self, plan, planner):
        before = (self.fs.requests, self.fs.bytes_fetched)
        fut = super().read_data(plan, planner)
        self.data_items = len(plan.items)
        self.data_fetch = (self.fs.requests - before[0], self.fs.bytes_fetched - before[1])
        return fut


def _empty_plan_load(rank, root):
    """A 2-rank load where rank 1 asks for nothing; returns the counters."""
    want = _full_tensors()
    sd = {} if rank == 1 else {"p": {"f32": torch.zeros_like(want["p.f32"]), "i64": torch.zeros_like(want["p.i64"])}}
    reader = _CountingReader(root, reader_constructor=ReaderConstructor.dcp_optimized())
    dcp.load(sd, storage_reader=reader)
    if rank == 0:
        assert torch.equal(sd["p"]["f32"], want["p.f32"]) and torch.equal(sd["p"]["i64"], want["p.i64"])
    return {
        "data_items": reader.data_items,
        "data_fetch": reader.data_fetch,
        "requests": reader.fs.requests,
        "bytes_fetched": reader.fs.bytes_fetched,
    }


def _expected_data_files(thread_count):
    strategy = HexPrefixStrategy(prefix_count=2)
    return {f"{strategy(r)}{n}.distcp" for r in range(WORLD) for n in range(thread_count)}


def _list_files(root):
    root = Path(root)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- 1 + 2: two ranks, three backends

BACKENDS = {
    # backend: (reader kinds, writer thread_count)
    "local": (["sequential", "range_based", "range_based(0)", "dcp_optimized", "dcp_optimized(0)"], 2),
    "ais": (["range_based", "dcp_optimized(0)"], 2),
    "s3s": (["sequential", "dcp_optimized"], 1),
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_rank_save_load(backend, request, tmp_path):
    kinds, thread_count = BACKENDS[backend]
    if backend == "local":
        root = str(tmp_path / "ckpt")
        listing_root = root
    elif backend == "ais":
        server = request.getfixturevalue("ais")
        server.bucket("ckpts")
        root = "ais://ckpts/run1/step10"
    else:
        server = request.getfixturevalue("s3s")
        server.bucket("ckpts")
        root = "s3://ckpts/run1/step10"
        listing_root = os.path.join(server.root, "ckpts", "run1", "step10")
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _spawn(_rank_main, (_free_port(), env, root, kinds, str(out_dir), thread_count, backend == "local"))

    # File layout: {prefix}{n}.distcp per rank, and .metadata.
    expected = _expected_data_files(thread_count) | {".metadata"}
    if backend == "ais":
        reqs = server.requests()
        stored = {r["object"] for r in reqs if r["method"] == "PUT" and r["status"] == 200}
        prefix = "run1/step10/"
        assert all(o.startswith(prefix) for o in stored), stored
        assert {o[len(prefix):] for o in stored} == _expected_data_files(thread_count) | {".metadata.tmp"}
        fs = FileSystem()
        for name in expected:
            assert fs.exists(f"{root}/{name}"), name
        assert not fs.exists(f"{root}/.metadata.tmp")
    else:
        assert _list_files(listing_root) == expected

    for rank in range(WORLD):
        results = torch.load(out_dir / f"rank{rank}.pt", weights_only=False)
        assert list(results["kinds"]) == kinds
        for kind in kinds:
            _check_snapshot(results["kinds"][kind], rank, f"{backend}/{kind}/rank{rank}")
            reader_kind, requests, fetched = results["stats"][kind]
            assert reader_kind == kind.split("(")[0]
            assert requests > 0 and fetched > 0

    if backend == "local":
        # 2: rank 1's load plan is empty: it reads the metadata and nothing else.
        meta_size = os.path.getsize(os.path.join(root, ".metadata"))
        r0 = torch.load(out_dir / "rank0.pt", weights_only=False)["empty_plan"]
        r1 = torch.load(out_dir / "rank1.pt", weights_only=False)["empty_plan"]
        assert r0["data_items"] == 2 and r0["data_fetch"][0] > 0 and r0["data_fetch"][1] > 0, r0
        assert r1["data_items"] == 0, r1
        assert r1["data_fetch"] == (0, 0), r1
        assert (r1["requests"], r1["bytes_fetched"]) == (1, meta_size), r1


# ---------------------------------------------------------------- 3: selective load on the AIStore-style server


def _coalesce(ranges, max_gap):
    """Sorted (start, end) ranges merged when at most max_gap apart."""
    out = []
    for s, e in sorted(ranges):
        if out and s - out[-1][1] <= max_gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [tuple(r) for r in out]


def _ranged_gets(reqs, prefix):
    """(object name without prefix, start, end exclusive) of every ranged GET
    a target served."""
    out = []
    for r in reqs:
        if r["method"] != "GET" or r["role"] == "gateway":
            continue
        assert r["status"] in (200, 206), r
        assert r["range"], f"GET without a Range header: {r}"
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", r["range"])
        assert m, r
        assert r["object"].startswith(prefix), r
        out.append((r["object"][len(prefix):], int(m.group(1)), int(m.group(2)) + 1))
    return out


def test_selective_load_fetches_only_planned_ranges(ais, tmp_path):
    ais.bucket("sel")
    root = "ais://sel/ckpt"
    g = torch.Generator().manual_seed(7)
    full = {f"t{i:02d}": torch.randn(1 + 37 * i + (i % 3) * 500, generator=g) for i in range(20)}
    dcp.save(dict(full), storage_writer=StorageWriter(root, thread_count=2))
    meta = StorageReader(root).read_metadata()
    by_file = {}
    for idx, info in meta.storage_data.items():
        by_file.setdefault(info.relative_path, []).append((info.offset, info.offset + info.length, idx.fqn))
    assert set(by_file) == {"__0_0.distcp", "__0_1.distcp"}
    files = sorted(by_file, key=lambda f: -len(by_file[f]))
    for f in files:
        by_file[f].sort()
    # Two non-adjacent items of the fuller file, one of the other.
    assert len(by_file[files[0]]) >= 5 and len(by_file[files[1]]) >= 3
    chosen = [by_file[files[0]][1], by_file[files[0]][4], by_file[files[1]][2]]
    keys = [c[2] for c in chosen]

    for gap in (0, float("inf")):
        sd = {k: torch.zeros_like(full[k]) for k in keys}
        before = len(ais.requests())
        reader = StorageReader(root, reader_constructor=ReaderConstructor.dcp_optimized(max_gap_size=gap))
        dcp.load(sd, storage_reader=reader)
        for k in keys:
            assert torch.equal(sd[k], full[k]), k
        gets = _ranged_gets(ais.requests()[before:], "ckpt/")

        meta_gets = [g for g in gets if g[0] == ".metadata"]
        meta_size = sum(e - s for _, s, e in meta_gets)
        assert meta_gets and _coalesce([(s, e) for _, s, e in meta_gets], 0) == [(0, meta_size)]
        data_gets = [g for g in gets if g[0] != ".metadata"]
        assert data_gets and all(g[0].endswith(".distcp") for g in data_gets), gets

        # The planned items' ranges, from the reader's own metadata.
        planned = {}
        for k in keys:
            [(idx, info)] = [(i, s) for i, s in reader.storage_data.items() if i.fqn == k]
            planned.setdefault(info.relative_path, []).append((info.offset, info.offset + info.length))
        allowed = {f: _coalesce(r, gap) for f, r in planned.items()}
        for f, s, e in data_gets:
            assert any(a <= s and e <= b for a, b in allowed.get(f, [])), (f, s, e, allowed)
        got_by_file = {}
        for f, s, e in data_gets:
            got_by_file.setdefault(f, []).append((s, e))
        # Each requested byte once, and exactly the allowed spans.
        for f, spans in got_by_file.items():
            assert sum(e - s for s, e in spans) == sum(e - s for s, e in _coalesce(spans, 0)), (f, spans)
        assert {f: _coalesce(r, 0) for f, r in got_by_file.items()} == allowed
        if gap == 0:
            total = sum(e - s for _, s, e in data_gets)
            assert total == sum(c[1] - c[0] for c in chosen)
            assert reader.fs.bytes_fetched == total + meta_size
        else:
            assert all(len(spans) == 1 for spans in allowed.values())
            f0 = by_file[files[0]]
            assert allowed[files[0]] == [(f0[1][0], f0[4][1])]


# ---------------------------------------------------------------- 4: the PyTorch-written fixture

_ST_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "F8_E4M3": torch.float8_e4m3fn,
}


def _read_safetensors(path):
    """A safetensors file by hand: u64 LE header length, JSON header, data."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES[h["dtype"]]
        s, e = h["data_offsets"]
        if e == s:
            out[name] = torch.empty(h["shape"], dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(data[base + s : base + e]), dtype=dtype).reshape(h["shape"])
    return out


def _truth_value(v):
    if isinstance(v, dict) and set(v) == {"__tuple__"}:
        return tuple(_truth_value(x) for x in v["__tuple__"])
    if isinstance(v, dict) and set(v) == {"__bytes_hex__"}:
        return bytes.fromhex(v["__bytes_hex__"])
    if isinstance(v, dict):
        return {k: _truth_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_truth_value(x) for x in v]
    return v


@pytest.mark.parametrize(
    "kind", ["sequential", "range_based", "range_based(0)", "dcp_optimized", "dcp_optimized(0)"]
)
def test_pytorch_fixture_loads(kind):
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    truth_tensors = _read_safetensors(TRUTH / "tensors.safetensors")
    items = json.loads((TRUTH / "items.json").read_text())
    truth_bytes = {i["fqn"]: _truth_value(i["value"]) for i in items["items"] if i["kind"] == "bytes"}

    reader = StorageReader(str(FIXTURE), reader_constructor=_reader_constructor(kind))
    md = reader.read_metadata().state_dict_metadata
    sd = {}
    for fqn, m in md.items():
        if isinstance(m, TensorStorageMetadata):
            sd[fqn] = torch.zeros(m.size, dtype=m.properties.dtype)
        else:
            assert isinstance(m, BytesStorageMetadata)
            sd[fqn] = None
    assert {k for k, v in sd.items() if v is not None} == set(truth_tensors)
    assert {k for k, v in sd.items() if v is None} == set(truth_bytes)

    reader = StorageReader(str(FIXTURE), reader_constructor=_reader_constructor(kind))
    dcp.load(sd, storage_reader=reader)
    for fqn, want in truth_tensors.items():
        _assert_same_tensor(sd[fqn], want, fqn)
    for fqn, want in truth_bytes.items():
        assert sd[fqn] == want, fqn
    # The items tile the data files, so the whole checkpoint is fetched once,
    # but for dcp_optimized: torch plans no read for a 0-element tensor, so
    # its item is never fetched. range_based without a buffer re-reads the
    # zip directories torch.load seeks back to.
    total = sum(f.stat().st_size for f in FIXTURE.iterdir())
    unread = sum(
        info.length
        for idx, info in reader.storage_data.items()
        if isinstance(md[idx.fqn], TensorStorageMetadata) and math.prod(md[idx.fqn].size) == 0
    )
    assert unread > 0
    if kind == "range_based(0)":
        assert total - unread <= reader.fs.bytes_fetched < total * 1.1
    elif kind.startswith("dcp_optimized"):
        assert reader.fs.bytes_fetched == total - unread
    else:
        assert reader.fs.bytes_fetched == total


# ---------------------------------------------------------------- 5: errors


def test_dcp_optimized_without_ranges_is_refused():
    fs = FileSystem(ReaderConstructor.dcp_optimized())
    with pytest.raises(ValueError, match=r"no ranges for .*__0_0\.distcp"):
        with fs.create_stream(str(FIXTURE / "__0_0.distcp"), "rb"):
            pass
    # .metadata is always read whole, ranges or not.
    with fs.create_stream(str(FIXTURE / ".metadata"), "rb") as s:
        assert len(s.read(-1)) == (FIXTURE / ".metadata").stat().st_size


@pytest.mark.parametrize("mode", ["xb", "r", "ab", "w", "rb+"])
def test_create_stream_invalid_mode(mode, tmp_path):
    fs = FileSystem()
    with pytest.raises(ValueError, match=re.escape(f"Invalid mode={mode}")):
        with fs.create_stream(str(tmp_path / "f"), mode):
            pass
    assert not (tmp_path / "f").exists()


class _Boom(Exception):
    pass


@pytest.mark.parametrize("backend", ["local", "ais", "s3s"])
def test_dropped_write_stores_nothing(backend, request, tmp_path):
    if backend == "local":
        root = str(tmp_path / "ckpt")
    else:
        server = request.getfixturevalue(backend)
        server.bucket("drop")
        root = f"{'ais' if backend == 'ais' else 's3'}://drop/ckpt"
    fs = FileSystem(part_size=5 << 20)  # the S3 minimum
    dropped = fs.concat_path(root, "__0_0.distcp")
    kept = fs.concat_path(root, "__0_1.distcp")
    payload = os.urandom(11 << 20)  # three parts
    with pytest.raises(_Boom):
        with fs.create_stream(dropped, "wb") as s:
            s.write(payload)
            raise _Boom()
    with fs.create_stream(kept, "wb") as s:
        s.write(payload)
    assert not fs.exists(dropped)
    assert fs.exists(kept)
    with FileSystem(ReaderConstructor.sequential()).create_stream(kept, "rb") as s:
        assert s.read(-1) == payload
    if backend == "local":
        assert _list_files(root) == {"__0_1.distcp"}
    elif backend == "s3s":
        assert sorted(os.listdir(os.path.join(server.root, "drop", "ckpt"))) == ["__0_1.distcp"]


def test_complex_tensors_load_like_torchs_reader(tmp_path):
    """Found in review: the Rust item decoder knows no complex storage, so
    a checkpoint torch's own FileSystemReader loads failed through ours
    with PickleError. Items the decoder refuses go through torch.load."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    from shmfetch.dcp import ReaderConstructor, StorageReader, StorageWriter

    g = torch.Generator().manual_seed(5)
    sd = {
        "c64": torch.randn(33, 7, generator=g, dtype=torch.complex64),
        "c128": torch.randn(5, generator=g, dtype=torch.complex128),
        "f32": torch.randn(100, generator=g),
    }
    path = str(tmp_path / "ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=StorageWriter(path))
        theirs = {k: torch.zeros_like(v) for k, v in sd.items()}
        dcp.load(theirs, storage_reader=FileSystemReader(path))
        for rc in [ReaderConstructor.dcp_optimized(), ReaderConstructor.sequential()]:
            ours = {k: torch.zeros_like(v) for k, v in sd.items()}
            dcp.load(ours, storage_reader=StorageReader(path, reader_constructor=rc))
            for k in sd:
                assert torch.equal(ours[k], sd[k]) and torch.equal(theirs[k], sd[k]), k

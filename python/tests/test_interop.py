"""Interoperability with the S3 connector for PyTorch (``s3torchconnector``
1.5.0) on s3s-fs: checkpoints saved by either writer load through the other's
reader, both writers name objects alike, and the prefix strategies agree.

Needs ``s3torchconnector==1.5.0``, ``s3torchconnectorclient==1.5.0`` and
``tenacity`` (installed with ``pip install --no-deps`` next to torch);
skipped when the connector cannot be imported."""

import os

import pytest

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
try:
    import s3torchconnector.dcp as s3dcp
    from s3torchconnector import S3ClientConfig, S3ReaderConstructor
    from s3torchconnector.dcp import s3_prefix_strategy as s3prefix
except ImportError as e:  # pragma: no cover - depends on the environment
    if os.environ.get("SHMFETCH_REQUIRE_INTEROP") == "1":  # the test command sets it
        raise
    pytest.skip(
        f"s3torchconnector cannot be imported ({e}): "
        "pip install --no-deps s3torchconnector==1.5.0 s3torchconnectorclient==1.5.0 tenacity",
        allow_module_level=True,
    )

from shmfetch import dcp as ours  # noqa: E402

REGION = "us-east-1"
BUCKET = "interop"


def client_config():
    return S3ClientConfig(force_path_style=True)


def make_state_dict():
    g = torch.Generator().manual_seed(1234)
    return {
        "f32": torch.randn(257, 33, generator=g),
        "f64": torch.randn(1000, generator=g, dtype=torch.float64),
        "f16": torch.randn(64, 64, generator=g).to(torch.float16),
        "bf16": torch.randn(3, 129, 7, generator=g).to(torch.bfloat16),
        "i64": torch.randint(-(2**62), 2**62, (4099,), generator=g, dtype=torch.int64),
        "i32": torch.randint(-(2**31), 2**31 - 1, (17, 5), generator=g, dtype=torch.int32),
        "u8": torch.randint(0, 256, (300_001,), generator=g, dtype=torch.uint8),
        "bool": torch.randint(0, 2, (77,), generator=g).bool(),
        "scalar": torch.tensor(3.25, dtype=torch.float32),
        "empty": torch.empty(0, 4, dtype=torch.float32),
        "layer": {"weight": torch.randn(128, 256, generator=g), "bias": torch.arange(128, dtype=torch.int64)},
        "blob": bytes(range(256)) * 41,
    }


def zeroed(sd):
    """A state dict of the same shape with every tensor zeroed and the
    bytes item replaced: load must fill all of it in."""
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out[k] = zeroed(v)
        elif isinstance(v, torch.Tensor):
            out[k] = torch.zeros_like(v)
        else:
            out[k] = b""
    return out


def assert_same(expected, got, path=""):
    assert set(expected) == set(got), path
    for k, v in expected.items():
        where = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            assert_same(v, got[k], where)
        elif isinstance(v, torch.Tensor):
            assert isinstance(got[k], torch.Tensor), where
            assert got[k].dtype == v.dtype, where
            assert got[k].shape == v.shape, where
            assert torch.equal(got[k], v), where
        else:
            assert got[k] == v, where


def object_keys(s3s, bucket, prefix=""):
    """Object keys under ``prefix`` in s3s-fs's directory of ``bucket``,
    relative to ``prefix`` (s3s-fs's ``.bucket-*`` sidecar files left out)."""
    base = os.path.join(s3s.root, bucket, prefix)
    keys = set()
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            if name.startswith(".bucket-"):
                continue
            keys.add(os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/"))
    return keys


def save_with_connector(path, sd, prefix_strategy=None, thread_count=1):
    writer = s3dcp.S3StorageWriter(
        REGION, path, s3client_config=client_config(), prefix_strategy=prefix_strategy, thread_count=thread_count
    )
    dcp.save(sd, storage_writer=writer)


def save_with_ours(path, sd, prefix_strategy=None, thread_count=1):
    dcp.save(sd, storage_writer=ours.StorageWriter(path, prefix_strategy=prefix_strategy, thread_count=thread_count))


OUR_READERS = {
    "dcp_optimized": lambda: ours.ReaderConstructor.dcp_optimized(),
    "dcp_optimized_gap0": lambda: ours.ReaderConstructor.dcp_optimized(max_gap_size=0),
    "sequential": lambda: ours.ReaderConstructor.sequential(),
    "range_based": lambda: ours.ReaderConstructor.range_based(buffer_size=64 << 10),
}

THEIR_READERS = {
    "dcp_optimized": lambda: S3ReaderConstructor.dcp_optimized(),
    "dcp_optimized_gap0": lambda: S3ReaderConstructor.dcp_optimized(max_gap_size=0),
    "sequential": lambda: S3ReaderConstructor.sequential(),
    "range_based": lambda: S3ReaderConstructor.range_based(buffer_size=64 << 10),
}


@pytest.mark.parametrize("reader", sorted(OUR_READERS))
@pytest.mark.parametrize("thread_count,path", [(1, "from-connector"), (3, "from-connector/"), (2, "")])
def test_connector_checkpoint_loads_through_ours(s3s, reader, thread_count, path):
    s3s.bucket(BUCKET)
    path = f"s3://{BUCKET}/{path}"
    sd = make_state_dict()
    save_with_connector(path, sd, s3dcp.HexPrefixStrategy(prefix_count=2, epoch_num=3), thread_count)

    got = zeroed(sd)
    dcp.load(got, storage_reader=ours.StorageReader(path, reader_constructor=OUR_READERS[reader]()))
    assert_same(sd, got)


@pytest.mark.parametrize("reader", sorted(THEIR_READERS))
@pytest.mark.parametrize("thread_count", [1, 3])
def test_our_checkpoint_loads_through_connector(s3s, reader, thread_count):
    s3s.bucket(BUCKET)
    path = f"s3://{BUCKET}/from-shmfetch"
    sd = make_state_dict()
    save_with_ours(path, sd, ours.HexPrefixStrategy(prefix_count=2, epoch_num=3), thread_count)

    got = zeroed(sd)
    storage_reader = s3dcp.S3StorageReader(
        REGION, path, s3client_config=client_config(), reader_constructor=THEIR_READERS[reader]()
    )
    dcp.load(got, storage_reader=storage_reader)
    assert_same(sd, got)


# Was a bug (CheckpointFs::mkdir parsed the prefix as an object; fixed,
# tests/it/store_fs.rs mkdir_of_an_object_store_prefix_is_a_no_op).
@pytest.mark.parametrize("path", ["from-shmfetch/", ""])
def test_our_writer_accepts_directory_paths(s3s, path):
    s3s.bucket(BUCKET)
    path = f"s3://{BUCKET}/{path}"
    sd = make_state_dict()
    save_with_ours(path, sd, ours.HexPrefixStrategy(prefix_count=2))
    got = zeroed(sd)
    dcp.load(got, storage_reader=s3dcp.S3StorageReader(REGION, path, s3client_config=client_config()))
    assert_same(sd, got)


def test_partial_load_through_ours(s3s):
    """A load of a subset of the connector's checkpoint (only some ranges
    of each file injected) through our dcp-optimized reader."""
    s3s.bucket(BUCKET)
    path = f"s3://{BUCKET}/partial"
    sd = make_state_dict()
    save_with_connector(path, sd, s3dcp.BinaryPrefixStrategy(prefix_count=4), thread_count=2)

    got = {"bf16": torch.zeros_like(sd["bf16"]), "layer": {"bias": torch.zeros_like(sd["layer"]["bias"])}}
    dcp.load(got, storage_reader=ours.StorageReader(path))
    assert torch.equal(got["bf16"], sd["bf16"])
    assert torch.equal(got["layer"]["bias"], sd["layer"]["bias"])


WRITER_STRATEGIES = [
    ("default", lambda m: m.DefaultPrefixStrategy(), 1),
    ("hex2", lambda m: m.HexPrefixStrategy(prefix_count=2), 1),
    ("hex_epoch", lambda m: m.HexPrefixStrategy(epoch_num=0, min_prefix_length=3, prefix_count=300), 3),
    ("binary_epoch", lambda m: m.BinaryPrefixStrategy(epoch_num=12, min_prefix_length=1), 2),
    ("roundrobin", lambda m: m.RoundRobinPrefixStrategy(["alpha", "beta/gamma"], epoch_num=5), 1),
]


def _theirs_module():
    # RoundRobinPrefixStrategy is not exported by s3torchconnector.dcp 1.5.0.
    class M:
        DefaultPrefixStrategy = s3prefix.DefaultPrefixStrategy
        HexPrefixStrategy = s3prefix.HexPrefixStrategy
        BinaryPrefixStrategy = s3prefix.BinaryPrefixStrategy
        RoundRobinPrefixStrategy = s3prefix.RoundRobinPrefixStrategy

    return M


@pytest.mark.parametrize("name,make,thread_count", WRITER_STRATEGIES, ids=[s[0] for s in WRITER_STRATEGIES])
def test_writers_name_objects_alike(s3s, name, make, thread_count):
    s3s.bucket(BUCKET)
    sd = make_state_dict()
    save_with_connector(f"s3://{BUCKET}/theirs", sd, make(_theirs_module()), thread_count)
    save_with_ours(f"s3://{BUCKET}/ours", sd, make(ours), thread_count)

    theirs = object_keys(s3s, BUCKET, "theirs")
    mine = object_keys(s3s, BUCKET, "ours")
    assert ".metadata" in theirs
    assert not any(k.endswith(".tmp") for k in theirs | mine), (theirs, mine)
    assert sum(k.endswith(".distcp") for k in theirs) == thread_count
    assert mine == theirs


# Arguments of the numeric strategies: (epoch_num, min_prefix_length, prefix_count).
NUMERIC_ARGS = [
    {},
    {"prefix_count": 1},
    {"prefix_count": 2},
    {"prefix_count": 4},
    {"prefix_count": 5},
    {"prefix_count": 16},
    {"prefix_count": 17},
    {"prefix_count": 20},
    {"prefix_count": 40},
    {"prefix_count": 300},
    {"prefix_count": 1025},
    {"epoch_num": 0},
    {"epoch_num": 7, "prefix_count": 5},
    {"epoch_num": 7, "min_prefix_length": 3, "prefix_count": 5},
    {"min_prefix_length": 1},
    {"min_prefix_length": 1, "prefix_count": 2},
    {"min_prefix_length": 1, "prefix_count": 3},
    {"min_prefix_length": 1, "prefix_count": 16},
    {"min_prefix_length": 1, "prefix_count": 17},
    {"min_prefix_length": 2, "prefix_count": 256},
    {"min_prefix_length": 2, "prefix_count": 257},
    {"epoch_num": 0, "min_prefix_length": 1, "prefix_count": 300},
    {"epoch_num": 123456789, "min_prefix_length": 12, "prefix_count": 33},
]

RANKS = range(41)

# The tables are looped over inside each test: the autouse leak check of
# conftest.py costs a few hundred milliseconds a test.


def prefixes(strategy):
    return [strategy(r) for r in RANKS]


@pytest.mark.parametrize("kind", ["Binary", "Hex"])
def test_numeric_prefixes_match(kind):
    for args in NUMERIC_ARGS:
        mine = getattr(ours, f"{kind}PrefixStrategy")(**args)
        theirs = getattr(s3prefix, f"{kind}PrefixStrategy")(**args)
        assert prefixes(mine) == prefixes(theirs), args
        assert [mine.generate_prefix(r) for r in RANKS] == [theirs.generate_prefix(r) for r in RANKS], args


def test_our_numeric_base_matches_connector():
    """Our concrete NumericPrefixStrategy(base) against the connector's
    subclass for that base (its NumericPrefixStrategy is abstract in 1.5.0)."""
    for base, theirs_class in [(2, s3prefix.BinaryPrefixStrategy), (16, s3prefix.HexPrefixStrategy)]:
        for args in NUMERIC_ARGS:
            assert prefixes(ours.NumericPrefixStrategy(base, **args)) == prefixes(theirs_class(**args)), (base, args)


def test_connector_numeric_is_abstract():
    """If a later connector makes NumericPrefixStrategy concrete, compare
    other bases too."""
    with pytest.raises(TypeError):
        s3prefix.NumericPrefixStrategy(10)


def test_default_prefixes_match():
    mine, theirs = ours.DefaultPrefixStrategy(), s3prefix.DefaultPrefixStrategy()
    assert prefixes(mine) == prefixes(theirs)


ROUND_ROBIN_ARGS = [
    (["a"], None),
    (["a", "b"], None),
    (["a", "b", "c"], 0),
    (["prefix-one", "prefix/two", "x_3", "4"], 9),
    ([f"p{i}" for i in range(7)], None),
    ([f"p{i}" for i in range(41)], 2),
    ([f"p{i}" for i in range(50)], None),
]


def test_round_robin_prefixes_match():
    for user_prefixes, epoch_num in ROUND_ROBIN_ARGS:
        mine = ours.RoundRobinPrefixStrategy(user_prefixes, epoch_num=epoch_num)
        theirs = s3prefix.RoundRobinPrefixStrategy(user_prefixes, epoch_num=epoch_num)
        assert prefixes(mine) == prefixes(theirs), (user_prefixes, epoch_num)


def test_documented_examples():
    """The examples in docs/s3-connector.md, from both implementations."""
    cases = [
        (lambda m: m.BinaryPrefixStrategy(prefix_count=4),
         {0: "0000000000/__0_", 1: "1000000000/__1_", 2: "0100000000/__2_", 3: "1100000000/__3_", 4: "0000000000/__4_"}),
        (lambda m: m.BinaryPrefixStrategy(epoch_num=7, min_prefix_length=3, prefix_count=5),
         {4: "001/epoch_7/__4_", 5: "000/epoch_7/__5_"}),
        (lambda m: m.HexPrefixStrategy(prefix_count=20),
         {15: "f000000000/__15_", 16: "0100000000/__16_", 19: "3100000000/__19_", 20: "0000000000/__20_"}),
        (lambda m: m.HexPrefixStrategy(epoch_num=0, min_prefix_length=1, prefix_count=300),
         {255: "ff0/epoch_0/__255_", 256: "001/epoch_0/__256_", 299: "b21/epoch_0/__299_"}),
    ]
    for make, expected in cases:
        for module in (ours, s3prefix):
            strategy = make(module)
            assert {r: strategy(r) for r in expected} == expected, module.__name__

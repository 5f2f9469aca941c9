"""Prefix strategies and reader constructors from Python against the S3
connector's own outputs (tests/fixtures/prefix_strategies.tsv, generated
from s3torchconnector 1.5.0 by scripts/gen-prefix-table.sh)."""

import json
import math

import pytest

from conftest import FIXTURES
from shmfetch.dcp import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    NumericPrefixStrategy,
    ReaderConstructor,
    RoundRobinPrefixStrategy,
)


def cell(v):
    """A table cell as the generator passed it."""
    if v == "-":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def rows():
    with open(FIXTURES / "prefix_strategies.tsv") as f:
        lines = [line.rstrip("\n") for line in f if not line.startswith("#")]
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def make(row, world, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: world is not None)
    monkeypatch.setattr(dist, "get_world_size", lambda: world)
    kw = {}
    for key, name in [("epoch", "epoch_num"), ("min", "min_prefix_length"), ("count", "prefix_count")]:
        if row[key] != "-":
            kw[name] = cell(row[key])
    kind = row["kind"]
    if kind == "default":
        return DefaultPrefixStrategy()
    if kind == "binary":
        return BinaryPrefixStrategy(**kw)
    if kind == "hex":
        return HexPrefixStrategy(**kw)
    if kind == "numeric":
        return NumericPrefixStrategy(int(row["base"]), **kw)
    if kind == "round-robin":
        kw.pop("min_prefix_length", None)
        kw.pop("prefix_count", None)
        return RoundRobinPrefixStrategy(json.loads(row["prefixes"]), **kw)
    raise AssertionError(kind)


def test_prefixes_equal_the_connectors(monkeypatch):
    checked = refused = 0
    for row in rows():
        world = None if row["world"] == "-" else int(row["world"])
        if row["outcome"] == "ok":
            s = make(row, world, monkeypatch)
            assert s(int(row["rank"])) == row["value"], row
            checked += 1
        else:
            theirs = row["value"].split(":", 1)[0]
            with pytest.raises((ValueError, TypeError)) as e:
                make(row, world, monkeypatch)
            # The connector's class, except where its message came from
            # Python's own formatting of a float (we say TypeError/ValueError
            # from our checks before any formatting).
            if row["bad"] in ("epoch", "count", "prefixes") or theirs == "TypeError":
                assert type(e.value).__name__ == theirs or isinstance(e.value, ValueError), row
            refused += 1
    assert checked > 3000 and refused > 50


def test_prefix_count_defaults_to_the_world_size(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    # Built before init_process_group: one prefix for every rank.
    assert [BinaryPrefixStrategy()(r) for r in range(3)] == ["0000000000/__0_", "0000000000/__1_", "0000000000/__2_"]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    assert BinaryPrefixStrategy()(3) == "1100000000/__3_"


def test_reader_constructors():
    assert ReaderConstructor.get_reader_type_string(ReaderConstructor.default()) == "sequential"
    assert ReaderConstructor.get_reader_type_string(ReaderConstructor.sequential()) == "sequential"
    assert ReaderConstructor.get_reader_type_string(ReaderConstructor.range_based()) == "range_based"
    assert ReaderConstructor.range_based().buffer_size == 8 << 20
    assert ReaderConstructor.range_based(0).buffer_size == 0
    assert ReaderConstructor.get_reader_type_string(ReaderConstructor.dcp_optimized()) == "dcp_optimized"
    assert ReaderConstructor.dcp_optimized().max_gap_size == 32 << 20
    assert ReaderConstructor.dcp_optimized(float("inf")).max_gap_size is None
    assert ReaderConstructor.dcp_optimized(0).max_gap_size == 0
    for bad in (-1, -0.5, math.nan):
        with pytest.raises(ValueError):
            ReaderConstructor.dcp_optimized(bad)
    with pytest.raises(TypeError):
        ReaderConstructor.dcp_optimized("32MiB")
    with pytest.raises(ValueError):
        ReaderConstructor.range_based(-1)
    from shmfetch.dcp import FileSystem

    assert FileSystem(ReaderConstructor.dcp_optimized(float("inf")))._fs.reader_description == (
        "dcp_optimized(max_gap_size=unbounded)"
    )
    with pytest.raises(ValueError, match="Invalid mode=ab"):
        with FileSystem().create_stream("/tmp/x", "ab"):
            pass

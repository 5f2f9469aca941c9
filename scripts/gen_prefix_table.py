"""Writes tests/fixtures/prefix_strategies.tsv from the S3 connector for
PyTorch's own prefix strategies (s3torchconnector==1.5.0,
s3torchconnector/dcp/s3_prefix_strategy.py).

Run through scripts/gen-prefix-table.sh, which makes the venv. The table is
committed; the Rust test (src/dcp/prefix.rs) checks every row of it.

The strategy module is pure Python but for `import torch.distributed as
dist`, which it reads once: `dist.is_initialized()` and
`dist.get_world_size()` give `prefix_count`'s default. A stub `torch` with
a settable world size stands in for torch. The module is loaded from its
file, not through `import s3torchconnector.dcp`, whose package __init__
imports the native client and torch's checkpoint modules.

Usage: python3 gen_prefix_table.py SITE_PACKAGES OUT.tsv
"""

import importlib.util
import json
import random
import re
import sys
import types

PACKAGE = "s3torchconnector==1.5.0"
MODULE = "s3torchconnector/dcp/s3_prefix_strategy.py"
COMMAND = "./scripts/gen-prefix-table.sh"


class World:
    """The stub torch.distributed's state: None = not initialised."""

    size = None


def install_torch_stub():
    torch = types.ModuleType("torch")
    dist = types.ModuleType("torch.distributed")
    dist.is_initialized = lambda: World.size is not None
    dist.get_world_size = lambda: World.size
    torch.distributed = dist
    sys.modules["torch"] = torch
    sys.modules["torch.distributed"] = dist


def load_strategies(site_packages):
    path = f"{site_packages}/{MODULE}"
    name = "s3torchconnector.dcp.s3_prefix_strategy"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def numeric_class(mod, base):
    """NumericPrefixStrategy is abstract (`_format_number`): the package
    itself only has Binary (base 2) and Hex (base 16). Other bases are a
    subclass with the same digits as Hex (0-9, then lower-case letters); all
    the rest (length, reversal, map, epoch, validation) is the package's
    code."""

    class Numeric(mod.NumericPrefixStrategy):
        def __init__(self, **kw):
            super().__init__(base=base, **kw)

        def _format_number(self, number, length):
            s = ""
            while number:
                s = DIGITS[number % base] + s
                number //= base
            return s.rjust(length, "0")

    return Numeric


# A cell holds an argument as the CLI spelling would write it; "-" means
# the argument is not passed. A cell becomes a Python int if it is an
# integer literal, a float if a decimal one, else it stays a str.
def to_py(cell):
    if re.fullmatch(r"-?[0-9]+", cell):
        return int(cell)
    if re.fullmatch(r"-?[0-9]+\.[0-9]*", cell):
        return float(cell)
    return cell


def cell(v):
    return "-" if v is None else str(v)


def make(mod, kind, base, epoch, mn, count, prefixes):
    kw = {}
    if kind == "round-robin":
        if epoch is not None:
            kw["epoch_num"] = to_py(epoch)
        return mod.RoundRobinPrefixStrategy(prefixes, **kw)
    if kind == "default":
        return mod.DefaultPrefixStrategy()
    if epoch is not None:
        kw["epoch_num"] = to_py(epoch)
    if mn is not None:
        kw["min_prefix_length"] = to_py(mn)
    if count is not None:
        kw["prefix_count"] = to_py(count)
    cls = {
        "binary": mod.BinaryPrefixStrategy,
        "hex": mod.HexPrefixStrategy,
    }.get(kind) or numeric_class(mod, base)
    return cls(**kw)


class Table:
    def __init__(self, mod):
        self.mod = mod
        self.rows = []
        self.seen = set()

    def ok(self, kind, ranks, base=None, epoch=None, mn=None, count=None, world=None, prefixes=None):
        World.size = world
        s = make(self.mod, kind, base, epoch, mn, count, prefixes)
        for rank in ranks:
            value = s(rank)
            self.add(kind, base, epoch, mn, count, world, prefixes, rank, "ok", value, None)
        return s

    def error(self, bad, kind, base=None, epoch=None, mn=None, count=None, world=None, prefixes=None):
        """A construction the package refuses; `bad` names the argument."""
        World.size = world
        try:
            make(self.mod, kind, base, epoch, mn, count, prefixes)
        except Exception as e:  # noqa: BLE001 - recorded as the package raised it
            value = f"{type(e).__name__}: {e}"
        else:
            raise SystemExit(f"expected an error: {kind} {base} {epoch} {mn} {count} {prefixes}")
        self.add(kind, base, epoch, mn, count, world, prefixes, None, "error", value, bad)

    def add(self, kind, base, epoch, mn, count, world, prefixes, rank, outcome, value, bad):
        row = (
            kind,
            cell(base),
            cell(epoch),
            cell(mn),
            cell(count),
            cell(world),
            "-" if prefixes is None else json.dumps(prefixes, separators=(",", ":")),
            cell(rank),
            outcome,
            value,
            cell(bad),
        )
        assert all("\t" not in c and "\n" not in c for c in row), row
        if row not in self.seen:
            self.seen.add(row)
            self.rows.append(row)


def build(mod):
    t = Table(mod)
    rng = random.Random(20261122)
    small_ranks = list(range(0, 20))

    # Default: no arguments, "__{rank}_".
    t.ok("default", small_ranks + [99, 255, 256, 599, 600, 1000003])

    # The examples in the connector's docs (shared/docs/s3-connector.md).
    t.ok("binary", range(0, 9), count="4")
    t.ok("binary", range(0, 11), epoch="7", mn="3", count="5")
    t.ok("hex", [0, 1, 15, 16, 19, 20, 21, 39, 40], count="20")
    t.ok("hex", [0, 1, 15, 16, 255, 256, 299, 300, 301, 599], epoch="0", mn="1", count="300")

    # prefix_count's default: the world size when torch.distributed is
    # initialised, else 1 (every rank the same prefix).
    for kind in ("binary", "hex"):
        t.ok(kind, [0, 1, 2, 7, 8, 63], world=None)
        t.ok(kind, [0, 1, 2, 7, 8, 63], epoch="3", mn="2", world=None)
        for world in (1, 2, 8, 17, 64):
            t.ok(kind, [0, 1, world - 1, world, 2 * world + 1], world=world)
        t.ok(kind, [0, 5, 299], epoch="0", mn="4", world=300)
    # An explicit prefix_count wins over the world size.
    t.ok("binary", [0, 1, 2, 3, 4, 5], count="3", world=64)
    t.ok("hex", [0, 1, 2, 3, 4, 5], count="3", world=64)

    # The grid: min_prefix_length 1..12 against counts around the powers
    # of each base, with and without an epoch (0 included).
    counts = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129,
              255, 256, 257, 300]
    kinds = [("binary", None), ("hex", None), ("numeric", 10), ("numeric", 3),
             ("numeric", 8), ("numeric", 36)]
    epochs = [None, "0", "1", "7", "42", "18446744073709551615"]
    for kind, base in kinds:
        for mn in [None] + [str(m) for m in range(1, 13)]:
            for count in counts:
                if rng.random() > 0.08 and count not in (1, 300):
                    continue
                epoch = rng.choice(epochs)
                c = int(count)
                ranks = sorted({0, 1, c - 1, c, c + 1, 2 * c - 1, rng.randrange(0, 601),
                                rng.randrange(0, 601)})
                t.ok(kind, ranks, base=base, epoch=epoch, mn=mn, count=str(count))

    # Every prefix_count 1..300 once (hex and base 10), at a rank past it.
    for count in range(1, 301):
        kind, base = ("hex", None) if count % 2 else ("numeric", 10)
        t.ok(kind, [count - 1, rng.randrange(0, 601)], base=base, mn=str(count % 12 + 1),
             count=str(count), epoch=None if count % 3 else str(count))

    # Every base the Rust side supports, 2..36, and a large prefix count.
    for base in range(2, 37):
        t.ok("numeric", [0, base - 1, base, base * base - 1, 599], base=base, mn="1",
             count=str(base * base))
    t.ok("binary", [0, 1, 1048575, 1048576, 1048577, 123456789], count=str(1 << 20), mn="1")
    t.ok("hex", [0, 1048575, 1048576, 123456789], count=str(1 << 20), epoch="9")

    # RoundRobin: the list is used as given, "/" appended (so "a/" gives "a//").
    rr = [
        ["a"],
        ["a", "b"],
        ["p0", "p1", "p2"],
        ["a/", "b/"],
        ["shard-x/y", "shard-z"],
        [""],
        ["", "q"],
        ["dup", "dup", "other"],
        [f"r{i}" for i in range(7)],
        ["päth", "日本"],
    ]
    for prefixes in rr:
        for epoch in (None, "0", "2", "1000"):
            t.ok("round-robin", [0, 1, 2, 3, 6, 7, 8, 20, 599], epoch=epoch, prefixes=prefixes)

    # What the package refuses, with its message.
    for kind, base in (("binary", None), ("hex", None), ("numeric", 10)):
        t.error("min", kind, base=base, mn="0", count="4")
        t.error("min", kind, base=base, mn="-1")
        t.error("min", kind, base=base, mn="-12", epoch="3", count="8")
        t.error("min", kind, base=base, mn="0.5", count="2")
        t.error("min", kind, base=base, mn="2.5", count="2")  # passes the check, fails formatting
        t.error("min", kind, base=base, mn="3.0")
        t.error("min", kind, base=base, mn="abc")
        t.error("epoch", kind, base=base, epoch="1.5", count="4")
        t.error("epoch", kind, base=base, epoch="2.0")
        t.error("epoch", kind, base=base, epoch="seven", count="4")
        t.error("epoch", kind, base=base, epoch="abc", mn="3")
        t.error("count", kind, base=base, count="0")
        t.error("count", kind, base=base, count="-1")
        t.error("count", kind, base=base, count="-300", epoch="1")
        t.error("count", kind, base=base, count="2.5")
        t.error("count", kind, base=base, count="4.0", mn="3")
        t.error("count", kind, base=base, count="four")
        # The package checks min_prefix_length first, then the epoch, then the count.
        t.error("min", kind, base=base, mn="0", epoch="1.5", count="0")
        t.error("epoch", kind, base=base, epoch="x", count="0")
    t.error("prefixes", "round-robin", prefixes=[])
    t.error("prefixes", "round-robin", epoch="3", prefixes=[])
    World.size = None
    return t.rows


HEADER = """\
# The S3 connector for PyTorch's DCP prefix strategies, as {package} computes them
# ({module}). Generated by: {command}
# (pip install --no-deps {package} into target/prefix-venv; a stub torch.distributed
# sets prefix_count's default). Do not edit: regenerate. Checked by src/dcp/prefix.rs.
#
# kind: default | binary | hex | numeric (NumericPrefixStrategy with `base`; the package
#   defines only base 2 and 16, other bases subclass it with digits 0-9a-z) | round-robin.
# epoch, min, count: epoch_num, min_prefix_length, prefix_count as passed ("-": not passed,
#   the package's default: no epoch, 10, the world size). A cell is passed as a Python int
#   if it is an integer literal, a float if a decimal one, else as a str.
# world: "-" = torch.distributed not initialised, N = initialised with world size N.
# prefixes: RoundRobinPrefixStrategy's user_prefixes (JSON).
# outcome ok: value = strategy(rank). outcome error: the constructor raised; value =
#   "Exception: message", bad = the argument at fault (min, epoch, count, prefixes).
kind\tbase\tepoch\tmin\tcount\tworld\tprefixes\trank\toutcome\tvalue\tbad
"""


def main():
    site_packages, out = sys.argv[1], sys.argv[2]
    install_torch_stub()
    mod = load_strategies(site_packages)
    rows = build(mod)
    # Self-checks: base 2 and 16 through the subclass equal Binary and Hex.
    for base, cls in ((2, mod.BinaryPrefixStrategy), (16, mod.HexPrefixStrategy)):
        for count in (1, 2, 5, 16, 17, 300):
            a = numeric_class(mod, base)(prefix_count=count, min_prefix_length=3)
            b = cls(prefix_count=count, min_prefix_length=3)
            assert [a(r) for r in range(600)] == [b(r) for r in range(600)]
    with open(out, "w", encoding="utf-8") as f:
        f.write(HEADER.format(package=PACKAGE, module=MODULE, command=COMMAND))
        for row in rows:
            f.write("\t".join(row) + "\n")
    oks = sum(1 for r in rows if r[8] == "ok")
    print(f"{out}: {len(rows)} rows ({oks} prefixes, {len(rows) - oks} errors)")


if __name__ == "__main__":
    main()

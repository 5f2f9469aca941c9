#!/usr/bin/env python3
"""The tail figures, side by side in one run (scripts/bench-tail.sh does
the set-up): per object and round, shmfetch-bench's single stream,
read-all and iter at each N (after one untimed warm-up run on the same
pool, so read-all stores into a recycled segment, as a pool that serves
many reads does), then the rig's own ceiling for N streams of
curl (each 1/N of the object, and each the whole object), all into
/dev/null or memory; medians over the rounds, each as MiB/s and as a
share of N x shmfetch's single stream.

  scripts/bench_tail.py --endpoint URL --objects obj256m:268435456,obj1g:1073741824 [--rounds 5] [--ns 2,4,8,16] [--out F]
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from curl_ceiling import streams  # noqa: E402


def bench(endpoint, obj, ns, verify):
    out = subprocess.run(
        ["target/release/shmfetch-bench", "--endpoint", endpoint, "--bucket", "bench", "--object", obj,
         "--workers", ",".join(map(str, ns)), "--runs", "1", "--warmup", "1", "--json", *(["--verify"] if verify else [])],
        check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if verify and any(r.get("verified") is False for r in rows):
        raise SystemExit(f"sha256 mismatch for {obj}: {rows}")
    return {(r["mode"], r["workers"]): r["mib_per_s"] for r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--objects", required=True, help="NAME:SIZE,...")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ns", default="2,4,8,16")
    ap.add_argument("--out", help="every round's MiB/s, as JSON")
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    objects = [(o.split(":")[0], int(o.split(":")[1])) for o in a.objects.split(",")]
    rates = {o: {} for o, _ in objects}

    def rec(obj, key, v):
        rates[obj].setdefault(key, []).append(v)

    for r in range(a.rounds):
        for obj, size in objects:
            for k, v in bench(a.endpoint, obj, ns, verify=r == 0).items():
                rec(obj, k, v)
            url = f"{a.endpoint}/v1/objects/bench/{obj}"
            mib = size / (1 << 20)
            for n in ns:
                rec(obj, ("curl 1/N each", n), mib / streams(url, size, n, "null", whole=False))
                rec(obj, ("curl whole each", n), n * mib / streams(url, size, n, "null", whole=True))
        print(f"round {r + 1} of {a.rounds}: " + "; ".join(
            f"{obj} " + " ".join(f"{m}/{n} {v[-1]:.0f}" for (m, n), v in rates[obj].items())
            for obj, _ in objects), file=sys.stderr, flush=True)

    if a.out:
        with open(a.out, "w") as f:
            json.dump({obj: {f"{m} N={n}": v for (m, n), v in r.items()} for obj, r in rates.items()}, f, indent=1)
    modes = ["read-all", "iter", "curl 1/N each", "curl whole each"]
    for obj, size in objects:
        med = {k: statistics.median(v) for k, v in rates[obj].items()}
        single = med[("get", 1)]
        print(f"\n{obj} ({size >> 20} MiB): single stream {single:.0f} MiB/s; MiB/s (share of N x single), "
              f"medians of {a.rounds} rounds")
        print("| N | " + " | ".join(modes) + " |")
        print("|---:|" + "---:|" * len(modes))
        for n in ns:
            cells = [f"{med[(m, n)]:.0f} ({med[(m, n)] / (n * single):.2f})" for m in modes]
            print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

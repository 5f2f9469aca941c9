#!/usr/bin/env python3
"""What the server and the machine give N streams of a client that does
nothing else: N curl processes at once, rounds alternating over N,
medians, as MiB/s and as a share of N x one curl alone. The rig's own
ceiling for the tail figures (scripts/bench-tail.sh), where N x single
stream is the ideal.

  --split  each curl gets 1/N of the object, as a parallel download would;
  --whole  each curl gets the whole object (N long streams: no request,
           redirect or process start between bytes; the kindest case).
  --sink   null: -o /dev/null (nothing stored); shm: one file per curl in
           /dev/shm (the bytes stored in memory, as shmfetch stores them).

  scripts/curl_ceiling.py URL SIZE [--split|--whole] [--ns 1,2,4,8,16] [--rounds 5] [--sink null|shm]
"""
import argparse
import os
import statistics
import subprocess
import time


def streams(url, size, n, sink, whole):
    """Seconds for n curl processes at once, each one 1/n of the object
    (or, `whole`, all of it)."""
    part = size // n
    outs = ["/dev/null"] * n if sink == "null" else [f"/dev/shm/curl-ranges-{os.getpid()}-{i}" for i in range(n)]
    t = time.perf_counter()
    procs = []
    for i in range(n):
        last = size - 1 if i == n - 1 else (i + 1) * part - 1
        span = [] if whole else ["-r", f"{i * part}-{last}"]
        procs.append(subprocess.Popen(["curl", "-sf", "-L", "-o", outs[i], *span, url]))
    ok = all(p.wait() == 0 for p in procs)
    took = time.perf_counter() - t
    for o in outs:
        if o != "/dev/null" and os.path.exists(o):
            os.remove(o)
    if not ok:
        raise SystemExit(f"curl failed against {url}")
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("size", type=int)
    ap.add_argument("--ns", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sink", choices=["null", "shm"], default="null")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--split", dest="whole", action="store_false")
    how.add_argument("--whole", dest="whole", action="store_true")
    ap.set_defaults(whole=False)
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    times = {n: [] for n in ns}
    for _ in range(a.rounds):
        for n in ns:
            times[n].append(streams(a.url, a.size, n, a.sink, a.whole))
    mib = a.size / (1 << 20)
    rate = {n: mib * (n if a.whole else 1) / statistics.median(times[n]) for n in ns}
    what = "whole objects" if a.whole else "ranges of 1/N"
    sink = "/dev/null" if a.sink == "null" else "/dev/shm"
    for n in ns:
        share = f"  ({rate[n] / (n * rate[1]):.2f} of {n} x single)" if 1 in rate else ""
        print(f"{n:>3} curl, {what}, -o {sink}: {rate[n]:7.0f} MiB/s{share}")


if __name__ == "__main__":
    main()

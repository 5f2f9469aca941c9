"""Driver of scripts/compare-peers.sh: alternating rounds, medians, ratios.

Every tool fetches the same object through the same nginx gateway (which
redirects each request to a target). Timings of the SDK are taken inside
its Python process (interpreter start-up excluded); shmfetch's come from
shmfetch-bench (pool start-up excluded, like a long-lived job).
"""
import argparse, json, os, statistics, subprocess, sys, time

SDK = r'''
import sys, time, warnings
warnings.filterwarnings("ignore")
from aistore.sdk import Client
gw, mode, n, obj = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
b = Client(gw).bucket("bench")
if mode in ("objects", "objects-direct"):
    names = [f"small-{i}" for i in range(64)]
    direct = mode == "objects-direct"
    t = time.perf_counter(); total = 0
    for nm in names:
        with b.object(nm).get_reader(num_workers=n, direct=direct).read_all() as buf:
            total += len(buf.buf)
    print(time.perf_counter() - t, total)
else:
    o = b.object(obj)
    t = time.perf_counter(); total = 0
    if mode == "read_all":
        with o.get_reader(num_workers=n).read_all() as buf:
            total = len(buf.buf)
    else:
        for chunk in o.get_reader(num_workers=n):
            total += len(chunk)
    print(time.perf_counter() - t, total)
'''

SIZE = 1 << 30
MIB = 1 << 20


def run(cmd, quiet=False):
    err = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=err, text=True).stdout


def curl(url, out):
    o = run(["curl", "-s", "-L", "-o", out, "-w", "%{size_download} %{time_total}", url])
    size, secs = o.split()
    assert int(size) == SIZE, o
    return float(secs)


def aria2(url, n):
    t = time.perf_counter()
    run(["aria2c", "-q", "-x", str(n), "-s", str(n), "-k", "1M", "--file-allocation=none",
         "--allow-overwrite=true", "-d", "/dev/shm", "-o", "peer-aria.bin", url])
    secs = time.perf_counter() - t
    assert os.path.getsize("/dev/shm/peer-aria.bin") == SIZE
    os.remove("/dev/shm/peer-aria.bin")
    return secs


def sdk(py, gw, mode, n, obj="obj1g"):
    secs, total = run([py, "-c", SDK, gw, mode, str(n), obj], quiet=True).split()
    return float(secs), int(total)


def bench(gw, n, modes):
    out = run(["target/release/shmfetch-bench", "--endpoint", gw, "--bucket", "bench", "--object", "obj1g",
               "--workers", str(n), "--runs", "1", "--warmup", "0", "--modes", modes, "--json"])
    rows = {}
    for line in out.splitlines():
        r = json.loads(line)
        assert r["bytes"] == SIZE, r
        rows[r["mode"]] = r["median_s"]
    return rows


def objects(gw, n, in_flight=1, extra=()):
    """64 x 4 MiB objects through the gateway and direct to target (same
    call, alternating): (gateway seconds, direct seconds)."""
    out = run(["target/release/shmfetch-bench", "--endpoint", gw, "--bucket", "bench", "--object", "small",
               "--objects", "64", "--workers", str(n), "--runs", "1", "--json", "--direct",
               "--in-flight", str(in_flight), *extra])
    rows = {r["mode"]: r["median_s"] for r in map(json.loads, out.splitlines())}
    return rows["read-all-objects"], rows["read-all-objects-direct"]


def ceiling(url, n, sink="/dev/null"):
    """The loopback ceiling: n curl processes at once, each one 1/n range of
    the object into /dev/null (nothing stored) or, sink /dev/shm, each into
    its own file there (the bytes stored in memory, as read-all stores
    them)."""
    part = SIZE // n
    outs = [sink if sink == "/dev/null" else f"/dev/shm/peer-ceiling-{i}" for i in range(n)]
    t = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-s", "-L", "-o", outs[i], "-r", f"{i * part}-{(i + 1) * part - 1}", url])
             for i in range(n)]
    assert all(p.wait() == 0 for p in procs)
    took = time.perf_counter() - t
    for o in outs:
        if o != "/dev/null":
            os.remove(o)
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway"); ap.add_argument("--limited"); ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python"); ap.add_argument("--out")
    ap.add_argument("--ns", default="2,4,8,16"); ap.add_argument("--limited-ns", default="2,4,8,16")
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",")]
    lns = [int(x) for x in a.limited_ns.split(",")]
    url = f"{a.gateway}/v1/objects/bench/obj1g"
    lurl = f"{a.limited}/v1/objects/bench/obj1g"
    t = {}  # key -> list of seconds

    def rec(key, secs):
        t.setdefault(key, []).append(secs)

    for rnd in range(a.rounds):
        print(f"-- round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)
        rec("curl -o /dev/null", curl(url, "/dev/null"))
        rec("curl -o /dev/shm", curl(url, "/dev/shm/peer-curl.bin")); os.remove("/dev/shm/peer-curl.bin")
        for n in ns:
            rec(f"aria2c -x{n}", aria2(url, n))
            rec(f"sdk read_all N={n}", sdk(a.python, a.gateway, "read_all", n)[0])
            rec(f"sdk iter N={n}", sdk(a.python, a.gateway, "iter", n)[0])
            r = bench(a.gateway, n, "get,read-all,iter")
            rec("shmfetch get", r["get"])
            rec(f"shmfetch read-all N={n}", r["read-all"])
            rec(f"shmfetch iter N={n}", r["iter"])
        rec("ceiling: 8 curl ranges -o /dev/null", ceiling(url, 8))
        rec("ceiling: 8 curl ranges -o /dev/shm", ceiling(url, 8, "/dev/shm"))
        rec("objects sdk N=8", sdk(a.python, a.gateway, "objects", 8)[0])
        try:
            rec("objects sdk direct N=8", sdk(a.python, a.gateway, "objects-direct", 8)[0])
        except subprocess.CalledProcessError as e:
            print(f"SDK direct=True failed: {e}", file=sys.stderr)
        g, d = objects(a.gateway, 8)
        rec("objects shmfetch N=8", g)
        rec("objects shmfetch direct N=8", d)
        g, d = objects(a.gateway, 8, in_flight=8)
        rec("objects shmfetch 8 in flight N=8", g)
        rec("objects shmfetch direct 8 in flight N=8", d)
        # Many objects at once: one request per object (a chunk size of at
        # least the object's) beats sharing each one among the workers.
        g, d = objects(a.gateway, 8, in_flight=8, extra=("--chunk-size", "8MiB"))
        rec("objects shmfetch 8 in flight 8MiB chunks N=8", g)
        rec("objects shmfetch direct 8 in flight 8MiB chunks N=8", d)
        rec("limited curl -o /dev/null", curl(lurl, "/dev/null"))
        for n in lns:
            r = bench(a.limited, n, "read-all,iter")
            rec(f"limited shmfetch read-all N={n}", r["read-all"])
            rec(f"limited shmfetch iter N={n}", r["iter"])
            rec(f"limited sdk read_all N={n}", sdk(a.python, a.limited, "read_all", n)[0])
            rec(f"limited aria2c -x{n}", aria2(lurl, n))

    med = {k: statistics.median(v) for k, v in t.items()}
    rate = {k: (64 * 4 if k.startswith("objects") else 1024) / s for k, s in med.items()}  # MiB/s
    print(f"\n# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {a.rounds} alternating rounds, medians, 1 GiB object")
    print(f"{'tool':34} {'MiB/s':>8}   runs (MiB/s)")
    for k in t:
        runs = " ".join(f"{(64 * 4 if k.startswith('objects') else 1024) / s:.0f}" for s in t[k])
        extra = f"  ({64 / med[k]:.1f} objects/s)" if k.startswith("objects") else ""
        print(f"{k:34} {rate[k]:8.0f}   {runs}{extra}")

    def best(prefix):
        ks = [k for k in rate if k.startswith(prefix)]
        k = max(ks, key=lambda k: rate[k])
        return k, rate[k]

    print("\n# ratios (same run)")
    lines = []
    for ours, theirs in [("shmfetch read-all", "sdk read_all"), ("shmfetch iter", "sdk iter"), ("shmfetch read-all", "aria2c"), ("shmfetch iter", "aria2c")]:
        ko, ro = best(ours); kt, rt = best(theirs)
        lines.append(f"{ko} / {kt}: {ro / rt:.2f}x ({ro:.0f} vs {rt:.0f} MiB/s)")
    lines.append(f"shmfetch get / curl -o /dev/null: {rate['shmfetch get'] / rate['curl -o /dev/null']:.2f}x")
    sdk_best, sdk_rate = best("objects sdk")
    for k in [k for k in rate if k.startswith("objects shmfetch")]:
        lines.append(f"objects/s, 64 x 4 MiB, N=8: {k} / {sdk_best} (the SDK's best): {rate[k] / sdk_rate:.2f}x "
                     f"({64 / med[k]:.1f} vs {64 / med[sdk_best]:.1f} objects/s)")
    ceil = rate["ceiling: 8 curl ranges -o /dev/null"]
    stored = rate["ceiling: 8 curl ranges -o /dev/shm"]
    for n in ns:
        for tool in ["shmfetch read-all", "shmfetch iter"]:
            k = f"{tool} N={n}"
            lines.append(f"{k}: {rate[k] / ceil:.2f} x the ceiling ({rate[k]:.0f} vs {ceil:.0f} MiB/s), "
                         f"{rate[k] / stored:.2f} x the storing ceiling ({stored:.0f})")
    single = rate["limited curl -o /dev/null"]
    for n in lns:
        for tool in ["shmfetch read-all", "shmfetch iter", "sdk read_all"]:
            k = f"limited {tool} N={n}"
            lines.append(f"limited N={n} {tool}: {rate[k]:.0f} MiB/s = {rate[k] / (n * single):.2f} x N x single stream ({single:.0f})")
        k = f"limited aria2c -x{n}"
        lines.append(f"limited N={n} aria2c: {rate[k]:.0f} MiB/s = {rate[k] / (n * single):.2f} x N x single stream")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"seconds": t, "median_mib_s": rate, "ratios": lines}, f, indent=1)


if __name__ == "__main__":
    main()

"""Driver of scripts/compare-s3-peers.sh: S3 peers in alternating rounds,
medians, ratios, and a check of every peer's bytes.

Every tool fetches the same 1 GiB object as bucket "bench", key "obj1g"
from nginx answering path-style S3 URLs (/bench/obj1g), unsigned, on
loopback: once unlimited, once at 100 MiB/s per request. The Python peers
are timed inside their process (interpreter start-up and imports excluded;
client creation, the HEAD and the GETs included); shmfetch's times come from
shmfetch-bench (pool start-up excluded, like a long-lived job).

Destinations: aws s3 cp -> a file in /dev/shm; boto3 -> io.BytesIO;
s3torchconnector -> bytes / a preallocated bytearray; shmfetch read-all ->
one /dev/shm segment, iter -> a ring of /dev/shm slots; curl -> /dev/null.

Verification: round 1 checks the sha256 of what every peer delivered against
the source file's; every later round checks the size.
"""
import argparse, glob, json, os, resource, signal, statistics, subprocess, sys, tempfile, time

SIZE = 1 << 30
MIB = 1 << 20
BUCKET, KEY = "bench", "obj1g"

# Each snippet prints "<seconds> <bytes> <sha256 or -> <CPU seconds>", the
# CPU seconds (user + system, all threads) of the timed part only.
AWSCLI = r'''
import hashlib, os, sys, time
from awscli.clidriver import create_clidriver
ep, dest, verify = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
d = create_clidriver()
c0 = os.times(); t = time.perf_counter()
rc = d.main(["s3", "cp", "--no-sign-request", "--only-show-errors", "--endpoint-url", ep,
             "s3://bench/obj1g", dest])
secs = time.perf_counter() - t; c1 = os.times()
if rc != 0:
    sys.exit(f"aws s3 cp exited {rc}")
sha = "-"
if verify:
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    sha = h.hexdigest()
print(secs, os.path.getsize(dest), sha, c1.user + c1.system - c0.user - c0.system)
'''

BOTO3 = r'''
import hashlib, io, os, sys, time
import boto3
from botocore import UNSIGNED
from botocore.config import Config
from boto3.s3.transfer import TransferConfig
ep, n, verify = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"},
                                max_pool_connections=max(10, n)))
buf = io.BytesIO()
c0 = os.times(); t = time.perf_counter()
s3.download_fileobj("bench", "obj1g", buf, Config=TransferConfig(max_concurrency=n))
secs = time.perf_counter() - t; c1 = os.times()
v = buf.getbuffer()
print(secs, len(v), hashlib.sha256(v).hexdigest() if verify else "-", c1.user + c1.system - c0.user - c0.system)
'''

# S3Client takes the endpoint from AWS_ENDPOINT_URL (set by the caller).
S3TORCH = r'''
import hashlib, os, sys, time, warnings
warnings.filterwarnings("ignore")  # torch: "Failed to initialize NumPy"
from s3torchconnector import S3ReaderConstructor
from s3torchconnector._s3client import S3Client, S3ClientConfig
mode, verify = sys.argv[1], sys.argv[2] == "1"
cfg = S3ClientConfig(force_path_style=True, unsigned=True)
c = S3Client("us-east-1", s3client_config=cfg)
c0 = os.times(); t = time.perf_counter()
if mode == "read":
    # The default (sequential) reader; read() of the whole object.
    data = c.get_object("bench", "obj1g").read()
    n = len(data)
else:
    # readinto a preallocated buffer through the range-based reader without
    # its buffer: one GET of the whole object, each part copied once.
    size = int(sys.argv[3])
    data = bytearray(size)
    r = c.get_object("bench", "obj1g", reader_constructor=S3ReaderConstructor.range_based(buffer_size=0))
    n = r.readinto(data)
secs = time.perf_counter() - t; c1 = os.times()
print(secs, n, hashlib.sha256(memoryview(data)[:n]).hexdigest() if verify else "-",
      c1.user + c1.system - c0.user - c0.system)
'''


def run(cmd, env=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout


class Check:
    """Sizes every time, sha256 when asked; remembers what it verified."""

    def __init__(self, sha):
        self.sha = sha
        self.verified = {}

    def __call__(self, key, size, sha):
        if size != SIZE:
            raise RuntimeError(f"{key}: delivered {size} bytes, not {SIZE}")
        if sha not in ("-", None):
            if sha != self.sha:
                raise RuntimeError(f"{key}: sha256 {sha} differs from the source's {self.sha}")
            self.verified[key] = "sha256"
        else:
            self.verified.setdefault(key, "size")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unlimited", required=True, help="endpoint URL of the unlimited server")
    ap.add_argument("--limited", required=True, help="endpoint URL of the 100 MiB/s-per-request server")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", required=True)
    ap.add_argument("--sha256", required=True, help="sha256 of the source object")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args()
    n = a.n
    check = Check(a.sha256)
    tmp = tempfile.mkdtemp(prefix="shmfetch-s3peers.", dir="/var/tmp")
    aws_dest = "/dev/shm/peer-s3-aws.bin"
    t = {}  # key -> list of seconds
    cpus = {}  # key -> list of CPU seconds

    def rec(key, secs, cpu=None):
        t.setdefault(key, []).append(secs)
        if cpu is not None:
            cpus.setdefault(key, []).append(cpu)

    def py(snippet, args, env):
        secs, size, sha, cpu = run([a.python, "-c", snippet, *args], env=env).split()
        return float(secs), int(size), sha, float(cpu)

    def env_for(ep, conc=None):
        e = dict(os.environ, AWS_ENDPOINT_URL=ep, AWS_EC2_METADATA_DISABLED="true")
        for k in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            e.pop(k, None)
        cfg = os.path.join(tmp, f"config-{conc or 'default'}")
        with open(cfg, "w") as f:
            f.write("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")
            if conc:
                f.write(f"  max_concurrent_requests = {conc}\n")
        e["AWS_CONFIG_FILE"] = cfg
        e["AWS_SHARED_CREDENTIALS_FILE"] = os.path.join(tmp, "no-credentials")
        return e

    def curl(key, url):
        o = run(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url])
        size, secs = o.split()
        check(key, int(size), None)
        rec(key, float(secs))

    def source(ep):
        return [f"s3://{BUCKET}/{KEY}", "--endpoint-url", ep, "--no-sign-request"]

    def shmfetch(ep, mode, verify):
        """One timed run of MODE; CPU seconds are the bench's and its
        workers' (all reaped before it exits), pool start-up included."""
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.Popen(["target/release/shmfetch-bench", "--url", *source(ep), "--workers", str(n), "--runs",
                              "1", "--warmup", "0", "--modes", mode, "--json", *(["--verify"] if verify else [])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate()
        finally:
            # The bench does not catch Ctrl-C: its workers die with it
            # (PR_SET_PDEATHSIG), its segments stay. Remove those, by its pid.
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in glob.glob(f"/dev/shm/shmfetch-{p.pid}-*"):
                os.remove(f)
        if p.returncode != 0:
            raise RuntimeError(f"shmfetch-bench failed ({p.returncode}): {err.strip()[-2000:]}")
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        for line in out.splitlines():
            r = json.loads(line)
            if r["mode"] != mode:
                continue
            if r["bytes"] != SIZE:
                raise RuntimeError(f"shmfetch {mode}: {r['bytes']} bytes")
            if verify and r["verified"] != "ok":
                raise RuntimeError(f"shmfetch {mode}: bytes differ from a plain GET ({r['verified']})")
            # With --verify the bench also hashed: its CPU seconds are not comparable.
            return r["median_s"], None if verify else cpu
        raise RuntimeError(f"shmfetch-bench printed no {mode} row: {out}")

    def shmfetch_cli(ep):
        """The CLI's file, compared with the source's sha256."""
        dest = "/dev/shm/peer-s3-shmfetch.bin"
        src = source(ep)
        try:
            run(["target/release/shmfetch", "get", *src, "-w", str(n), "-q", "-o", dest])
            size, sha = os.path.getsize(dest), run(["sha256sum", dest]).split()[0]
        finally:
            if os.path.exists(dest):
                os.remove(dest)
        check(f"{'limited ' if ep == a.limited else ''}shmfetch get -o /dev/shm/… (CLI)", size, sha)

    def peers(prefix, ep, verify):
        v = "1" if verify else "0"
        curl(f"{prefix}curl -o /dev/null (1 stream)", f"{ep}/{BUCKET}/{KEY}")
        for conc in (10, n):
            k = f"{prefix}aws s3 cp N={conc}{' (default)' if conc == 10 else ''}"
            secs, size, sha, cpu = py(AWSCLI, [ep, aws_dest, v], env_for(ep, None if conc == 10 else conc))
            os.remove(aws_dest)
            check(k, size, sha); rec(k, secs, cpu)
        k = f"{prefix}boto3 download_fileobj N={n}"
        secs, size, sha, cpu = py(BOTO3, [ep, str(n), v], env_for(ep))
        check(k, size, sha); rec(k, secs, cpu)
        for mode in ("read", "readinto"):
            k = f"{prefix}s3torchconnector {mode}()"
            secs, size, sha, cpu = py(S3TORCH, [mode, v, str(SIZE)], env_for(ep))
            check(k, size, sha); rec(k, secs, cpu)
        for mode in ("read-all", "iter"):
            k = f"{prefix}shmfetch {mode} N={n}"
            secs, cpu = shmfetch(ep, mode, verify)
            if verify:
                check.verified[k] = "sha256 = a plain GET's"
            check(k, SIZE, None); rec(k, secs, cpu)
        if verify:
            shmfetch_cli(ep)

    try:
        for rnd in range(a.rounds):
            print(f"-- round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)
            # Alternate the order of the two servers from round to round.
            order = [("", a.unlimited), ("limited ", a.limited)]
            if rnd % 2:
                order.reverse()
            for prefix, ep in order:
                peers(prefix, ep, rnd == 0)
    finally:
        if os.path.exists(aws_dest):
            os.remove(aws_dest)
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)

    med = {k: statistics.median(v) for k, v in t.items()}
    rate = {k: 1024 / s for k, s in med.items()}  # MiB/s
    print(f"\n# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, {a.rounds} alternating "
          f"rounds, medians, 1 GiB object, nginx on loopback as an unsigned path-style S3 endpoint")
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print(f"{'tool':44} {'MiB/s':>8} {'CPU s':>6}   runs (MiB/s)   verified")
    for k in t:
        runs = " ".join(f"{1024 / s:.0f}" for s in t[k])
        c = f"{cpu[k]:6.1f}" if k in cpu else f"{'-':>6}"
        print(f"{k:44} {rate[k]:8.0f} {c}   {runs}   {check.verified.get(k, '-')}")
    for k, how in check.verified.items():
        if k not in t:
            print(f"{k:44} {'':>8} {'':>6}   (not timed)   {how}")
    print("CPU s: user + system seconds of the timed part, all threads and processes of the client (median; "
          "shmfetch: the bench's workers too, pool start-up included, rounds with --verify left out)")

    lines = []
    for prefix, what in (("", "unlimited"), ("limited ", "limited")):
        peer = [k for k in rate if k.startswith(prefix) and "shmfetch" not in k and "curl" not in k
                and (prefix or not k.startswith("limited "))]
        best = max(peer, key=lambda k: rate[k])
        single = rate[f"{prefix}curl -o /dev/null (1 stream)"]
        for mode in ("read-all", "iter"):
            k = f"{prefix}shmfetch {mode} N={n}"
            lines.append(f"{what}: shmfetch {mode} / best peer ({best[len(prefix):]}): {rate[k] / rate[best]:.2f}x "
                         f"({rate[k]:.0f} vs {rate[best]:.0f} MiB/s); / single stream: {rate[k] / single:.2f}x")
        lines.append(f"{what}: best peer / single stream: {rate[best] / single:.2f}x")
        target = 1.5 if prefix else 1.0
        ours = max(rate[f"{prefix}shmfetch {m} N={n}"] for m in ("read-all", "iter"))
        lines.append(f"{what}: target shmfetch >= {target}x best peer at N={n}: "
                     f"{'met' if ours >= target * rate[best] else 'NOT met'} ({ours / rate[best]:.2f}x)")
    print("\n# ratios (same run)")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                       "rounds": a.rounds, "n": n, "seconds": t, "cpu_seconds": cpus, "median_mib_s": rate,
                       "verified": check.verified, "ratios": lines}, f, indent=1)


if __name__ == "__main__":
    # SIGTERM, like Ctrl-C, unwinds through the finally blocks that clean up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

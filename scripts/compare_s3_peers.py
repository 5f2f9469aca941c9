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
import argparse, json, os, statistics, subprocess, sys, tempfile, time

SIZE = 1 << 30
MIB = 1 << 20
BUCKET, KEY = "bench", "obj1g"

# Each snippet prints "<seconds> <bytes> <sha256 or ->".
AWSCLI = r'''
import hashlib, os, sys, time
from awscli.clidriver import create_clidriver
ep, dest, verify = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
d = create_clidriver()
t = time.perf_counter()
rc = d.main(["s3", "cp", "--no-sign-request", "--only-show-errors", "--endpoint-url", ep,
             "s3://bench/obj1g", dest])
secs = time.perf_counter() - t
if rc != 0:
    sys.exit(f"aws s3 cp exited {rc}")
sha = "-"
if verify:
    h = hashlib.sha256()
    with open(dest, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    sha = h.hexdigest()
print(secs, os.path.getsize(dest), sha)
'''

BOTO3 = r'''
import hashlib, io, sys, time
import boto3
from botocore import UNSIGNED
from botocore.config import Config
from boto3.s3.transfer import TransferConfig
ep, n, verify = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"},
                                max_pool_connections=max(10, n)))
buf = io.BytesIO()
t = time.perf_counter()
s3.download_fileobj("bench", "obj1g", buf, Config=TransferConfig(max_concurrency=n))
secs = time.perf_counter() - t
v = buf.getbuffer()
print(secs, len(v), hashlib.sha256(v).hexdigest() if verify else "-")
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
t = time.perf_counter()
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
secs = time.perf_counter() - t
print(secs, n, hashlib.sha256(memoryview(data)[:n]).hexdigest() if verify else "-")
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
    ap.add_argument("--s3", action="store_true", help="shmfetch reads s3://bench/obj1g (else the plain http URL)")
    ap.add_argument("--out")
    a = ap.parse_args()
    n = a.n
    check = Check(a.sha256)
    tmp = tempfile.mkdtemp(prefix="shmfetch-s3peers.", dir="/var/tmp")
    aws_dest = "/dev/shm/peer-s3-aws.bin"
    t = {}  # key -> list of seconds

    def rec(key, secs):
        t.setdefault(key, []).append(secs)

    def py(snippet, args, env):
        secs, size, sha = run([a.python, "-c", snippet, *args], env=env).split()
        return float(secs), int(size), sha

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

    def curl(url):
        o = run(["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url])
        size, secs = o.split()
        check(f"curl {url}", int(size), None)
        return float(secs)

    def shmfetch(ep, verify):
        if a.s3:
            src = ["--url", f"s3://{BUCKET}/{KEY}", "--endpoint-url", ep, "--no-sign-request"]
        else:
            src = ["--url", f"{ep}/{BUCKET}/{KEY}"]
        out = run(["target/release/shmfetch-bench", *src, "--workers", str(n), "--runs", "1", "--warmup", "0",
                   "--modes", "read-all,iter", "--json", *(["--verify"] if verify else [])])
        if verify:
            # The bench compares with its own plain GET; the CLI's file is
            # compared with the source itself.
            dest = "/dev/shm/peer-s3-shmfetch.bin"
            try:
                run(["target/release/shmfetch", "get", src[1], *src[2:], "-w", str(n), "-q", "-o", dest])
                size, sha = os.path.getsize(dest), run(["sha256sum", dest]).split()[0]
            finally:
                if os.path.exists(dest):
                    os.remove(dest)
            check(f"shmfetch get {src[1]} (CLI)", size, sha)
        rows = {}
        for line in out.splitlines():
            r = json.loads(line)
            if r["mode"] not in ("read-all", "iter"):
                continue
            if r["bytes"] != SIZE:
                raise RuntimeError(f"shmfetch {r['mode']}: {r['bytes']} bytes")
            if verify and r["verified"] != "ok":
                raise RuntimeError(f"shmfetch {r['mode']}: bytes differ from a plain GET ({r['verified']})")
            rows[r["mode"]] = r["median_s"]
        return rows

    def peers(prefix, ep, verify):
        v = "1" if verify else "0"
        p = f"{prefix}curl -o /dev/null (1 stream)"
        rec(p, curl(f"{ep}/{BUCKET}/{KEY}"))
        for conc in (10, n):
            k = f"{prefix}aws s3 cp N={conc}{' (default)' if conc == 10 else ''}"
            secs, size, sha = py(AWSCLI, [ep, aws_dest, v], env_for(ep, None if conc == 10 else conc))
            os.remove(aws_dest)
            check(k, size, sha); rec(k, secs)
        k = f"{prefix}boto3 download_fileobj N={n}"
        secs, size, sha = py(BOTO3, [ep, str(n), v], env_for(ep))
        check(k, size, sha); rec(k, secs)
        for mode in ("read", "readinto"):
            k = f"{prefix}s3torchconnector {mode}()"
            secs, size, sha = py(S3TORCH, [mode, v, str(SIZE)], env_for(ep))
            check(k, size, sha); rec(k, secs)
        verify_shm = verify
        r = shmfetch(ep, verify_shm)
        for mode in ("read-all", "iter"):
            k = f"{prefix}shmfetch {mode} N={n}"
            if verify_shm:
                check.verified[k] = "sha256 = a plain GET's"
            check(k, SIZE, None); rec(k, r[mode])

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
    print(f"{'tool':44} {'MiB/s':>8}   runs (MiB/s)   verified")
    for k in t:
        runs = " ".join(f"{1024 / s:.0f}" for s in t[k])
        print(f"{k:44} {rate[k]:8.0f}   {runs}   {check.verified.get(k, '-')}")

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
    print("\n# ratios (same run)")
    print("\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
                       "rounds": a.rounds, "n": n, "seconds": t, "median_mib_s": rate,
                       "verified": check.verified, "ratios": lines}, f, indent=1)


if __name__ == "__main__":
    main()

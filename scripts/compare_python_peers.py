"""Driver of scripts/compare-python-peers.sh: DCP loads through the S3
connector for PyTorch vs shmfetch.dcp, and the AIStore SDK's read_all vs
shmfetch.ParallelReader.read_all, each measurement in a fresh process."""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

MiB = 1 << 20
# The SDK refuses num_workers=1 ("must be at least 2").
NS = [2, 4, 8, 16]


def make_checkpoint(path):
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    g = torch.Generator().manual_seed(1234)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.int64]
    sd, manifest, total = {}, {}, 0
    i = 0
    while total < 1100 * MiB:
        # Sizes log-uniform from 16 KiB to 24 MiB, like a model's layers.
        nbytes = int(2 ** (14 + torch.rand(1, generator=g).item() * 10.6))
        dt = dtypes[i % len(dtypes)]
        n = max(1, nbytes // torch.tensor([], dtype=dt).element_size())
        if dt == torch.int64:
            t = torch.randint(-(2**40), 2**40, (n,), generator=g, dtype=dt)
        else:
            t = torch.randn(n, generator=g).to(dt)
        key = f"layer{i:03d}.weight"
        sd[key] = t
        manifest[key] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                         "sha256": hashlib.sha256(t.view(torch.uint8).numpy()).hexdigest()}
        total += t.numel() * t.element_size()
        i += 1
    dcp.save(sd, storage_writer=FileSystemWriter(path, thread_count=4, sync_files=False))
    with open(path + ".json", "w") as f:
        json.dump(manifest, f)
    print(f"checkpoint: {len(sd)} tensors, {total / MiB:.0f} MiB, files: {sorted(os.listdir(path))}")


def load(tool, endpoint, manifest_path, partial, verify, n):
    """One timed dcp.load in this process; prints JSON."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    warnings.simplefilter("ignore")
    with open(manifest_path) as f:
        manifest = json.load(f)
    keys = sorted(manifest)
    if partial:
        keys = keys[::10]
    if tool.startswith("shmfetch"):
        import shmfetch

        # Created early, before the state dict, as the README advises: pages
        # the parent writes after a fork are copied on write.
        pool = shmfetch.WorkerPool(n)
    sd = {k: torch.zeros(manifest[k]["shape"], dtype=getattr(torch, manifest[k]["dtype"])) for k in keys}
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ.setdefault("AWS_REGION", "us-east-1")
    if tool.startswith("connector"):
        from s3torchconnector import S3ClientConfig, S3ReaderConstructor
        from s3torchconnector.dcp import S3StorageReader

        rc = S3ReaderConstructor.dcp_optimized() if tool == "connector-dcp_optimized" else S3ReaderConstructor.sequential()
        reader = S3StorageReader("us-east-1", "s3://bench/ckpt", s3client_config=S3ClientConfig(force_path_style=True, unsigned=True), reader_constructor=rc)
    else:
        from shmfetch.dcp import ReaderConstructor, StorageReader

        reader = StorageReader("s3://bench/ckpt", reader_constructor=ReaderConstructor.dcp_optimized(),
                               pool=pool, endpoint_url=endpoint, unsigned=True)
    t0 = time.perf_counter()
    dcp.load(sd, storage_reader=reader)
    secs = time.perf_counter() - t0
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    ok = True
    if verify:
        ok = all(hashlib.sha256(sd[k].view(torch.uint8).numpy()).hexdigest() == manifest[k]["sha256"] for k in keys)
    print(json.dumps({"secs": secs, "bytes": nbytes, "ok": ok}))


def read_all(tool, endpoint, n, verify_sha):
    t_setup = time.perf_counter()
    if tool == "sdk":
        from aistore.sdk import Client

        obj = Client(endpoint).bucket("bench").object("obj1g")
        t0 = time.perf_counter()
        # The SDK hands back a context manager over its shared memory.
        with obj.get_reader(num_workers=n).read_all() as buf:
            secs = time.perf_counter() - t0
            digest = hashlib.sha256(buf.buf).hexdigest() if verify_sha else None
            size = len(buf.buf)
    else:
        import shmfetch

        r = shmfetch.ParallelReader("ais://bench/obj1g", pool=shmfetch.WorkerPool(n), endpoint=endpoint)
        t0 = time.perf_counter()
        with r.read_all() as buf:
            secs = time.perf_counter() - t0
            digest = hashlib.sha256(buf).hexdigest() if verify_sha else None
            size = len(buf)
    ok = digest is None or digest == verify_sha
    print(json.dumps({"secs": secs, "bytes": size, "ok": ok, "setup": t0 - t_setup}))


def run(args):
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a):
    manifest = a.ckpt + ".json"
    with open(a.object, "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    results = {}

    def rec(key, r):
        if not r["ok"]:
            raise SystemExit(f"{key}: WRONG BYTES")
        results.setdefault(key, []).append(r["bytes"] / MiB / r["secs"])

    tools = ["connector-dcp_optimized", "connector-sequential", f"shmfetch-N{a.n}"]
    for rnd in range(a.rounds):
        verify = "1" if rnd == 0 else "0"
        for label, ep in [("unlimited", a.s3), ("limited", a.s3_limited)]:
            for part in ["full", "partial"]:
                order = tools if rnd % 2 == 0 else tools[::-1]
                for tool in order:
                    r = run(["load", tool, ep, manifest, "1" if part == "partial" else "0", verify, str(a.n)])
                    rec(f"dcp {label} {part} {tool}", r)
                    print(f"round {rnd + 1} dcp {label:9} {part:7} {tool:24} {r['bytes'] / MiB / r['secs']:8.0f} MiB/s", flush=True)
        for n in NS:
            for tool in (["sdk", "shmfetch"] if rnd % 2 == 0 else ["shmfetch", "sdk"]):
                r = run(["read-all", tool, a.ais, str(n), sha if rnd == 0 else ""])
                rec(f"read_all {tool} N={n}", r)
                print(f"round {rnd + 1} read_all {tool:8} N={n:<2} {r['bytes'] / MiB / r['secs']:8.0f} MiB/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n== medians of {a.rounds} rounds (MiB/s of tensor bytes loaded / object bytes read), "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    print(f"{'DCP load (1.1 GiB checkpoint, 4 files)':44} {'full':>8} {'10%':>8}")
    for label in ["unlimited", "limited"]:
        for tool in tools:
            f, p = med[f"dcp {label} full {tool}"], med[f"dcp {label} partial {tool}"]
            print(f"{label + ' ' + tool:44} {f:8.0f} {p:8.0f}")
        base_f = med[f"dcp {label} full connector-dcp_optimized"]
        base_p = med[f"dcp {label} partial connector-dcp_optimized"]
        ours_f = med[f"dcp {label} full {tools[2]}"]
        ours_p = med[f"dcp {label} partial {tools[2]}"]
        print(f"{label + ' shmfetch / connector dcp_optimized':44} {ours_f / base_f:7.2f}x {ours_p / base_p:7.2f}x")
    print(f"\n{'read_all of 1 GiB (nginx AIStore rig)':38} " + " ".join(f"{'N=' + str(n):>7}" for n in NS))
    for tool in ["sdk", "shmfetch"]:
        print(f"{tool:38} " + " ".join(f"{med[f'read_all {tool} N={n}']:7.0f}" for n in NS))
    best_sdk = max(med[f"read_all sdk N={n}"] for n in NS)
    best_ours = max(med[f"read_all shmfetch N={n}"] for n in NS)
    print(f"{'best shmfetch / best SDK':38} {best_ours / best_sdk:7.2f}x")
    with open(a.out, "w") as f:
        json.dump({"medians": med, "runs": results}, f, indent=1)


def main():
    if sys.argv[1] == "make-checkpoint":
        return make_checkpoint(sys.argv[2])
    if sys.argv[1] == "load":
        tool, ep, manifest, partial, verify, n = sys.argv[2:8]
        return load(tool, ep, manifest, partial == "1", verify == "1", int(n))
    if sys.argv[1] == "read-all":
        tool, ep, n, sha = sys.argv[2:6]
        return read_all(tool, ep, int(n), sha or None)
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("--s3", required=True)
    p.add_argument("--s3-limited", required=True)
    p.add_argument("--ais", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--object", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    compare(p.parse_args())


if __name__ == "__main__":
    main()

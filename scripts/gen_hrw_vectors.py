#!/usr/bin/env python3
"""Writes tests/fixtures/hrw-vectors.json: AIStore HRW placement test vectors
computed by the AIStore Python SDK itself (aistore==2.0.0), for
src/source/aistore/hrw.rs.

    python3 -m venv target/ais-venv
    target/ais-venv/bin/pip install aistore==2.0.0
    target/ais-venv/bin/python scripts/gen_hrw_vectors.py > tests/fixtures/hrw-vectors.json

Each smap is what `GET /v1/daemon?what=smap` returns (only the fields the
SDK reads); `id_digest` is xxh64(daemon_id, seed 1103515245) as the
cluster computes it (core/meta/smap.go). Each case names a bucket
(provider, namespace, name) and an object, the uname the SDK builds from
them (`Bucket.get_path() + name`) and the target `Smap.get_target_for_object`
picks.
"""
import json
import random

import xxhash
from aistore.sdk.types import Smap, Namespace, BucketModel
from aistore.sdk import utils

SEED = utils.XX_HASH_SEED


def node(daemon_id, port, flags=0):
    return {
        "daemon_id": daemon_id,
        "daemon_type": "target",
        "public_net": {
            "node_ip_addr": "127.0.0.1",
            "daemon_port": str(port),
            "direct_url": f"http://127.0.0.1:{port}",
        },
        "flags": flags,
        "id_digest": xxhash.xxh64(daemon_id.encode(), seed=SEED).intdigest(),
    }


def smap(targets):
    proxy = node("p1", 8080)
    proxy["daemon_type"] = "proxy"
    return {
        "tmap": {t["daemon_id"]: t for t in targets},
        "pmap": {"p1": proxy},
        "proxy_si": proxy,
        "version": 7,
        "uuid": "cluster",
    }


rng = random.Random(14)
ids = ["t%03d" % i for i in range(5)]
smaps = [
    # five healthy targets
    smap([node(i, 9000 + n) for n, i in enumerate(ids)]),
    # the same five: one in maintenance (4), one decommissioning (8), one
    # non-electable (1, not skipped) and one with both bits
    smap(
        [
            node(ids[0], 9000, 4),
            node(ids[1], 9001, 8),
            node(ids[2], 9002, 1),
            node(ids[3], 9003, 0),
            node(ids[4], 9004, 0),
        ]
    ),
    # twelve targets with random ids, two flagged
    smap(
        [
            node(
                "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8)),
                9100 + n,
                12 if n in (3, 7) else 0,
            )
            for n in range(12)
        ]
    ),
]

buckets = [
    ("ais", None, "bkt"),
    ("aws", None, "bkt"),
    ("ais", ("", "ns1"), "bkt"),
    ("ais", ("Uuid7", "team"), "data.v2"),
    ("gcp", None, "models-1"),
]
objects = [
    "obj",
    "a/b/c.bin",
    "shard-000017.tar",
    "ümlaut/日本語.bin",
    "a+b c%20d",
    "+",
    "x" * 200,
    "emoji-🦀",
]

cases = []
for prov, ns, b in buckets:
    namespace = Namespace(uuid=ns[0], name=ns[1]) if ns else None
    bm = BucketModel(name=b, provider=prov, namespace=namespace)
    for o in objects:
        uname = bm.get_path() + o
        picks = [Smap(**s).get_target_for_object(uname).daemon_id for s in smaps]
        cases.append(
            {
                "provider": prov,
                "ns_uuid": ns[0] if ns else "",
                "ns_name": ns[1] if ns else "",
                "bucket": b,
                "object": o,
                "uname": uname,
                "digest": utils.get_digest(uname),
                "targets": picks,
            }
        )

mix = [[s, utils.xoshiro256_hash(s)] for s in [0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 12345678901234567]]
print(json.dumps({"generator": "aistore==2.0.0 scripts/gen_hrw_vectors.py", "smaps": smaps, "xoshiro256": mix, "cases": cases}, indent=1, ensure_ascii=False))

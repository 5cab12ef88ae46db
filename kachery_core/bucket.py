"""Objects in an S3-compatible bucket (SPEC §5, "Buckets"). The only module that imports boto3.

    s3://<bucket>/<prefix>   ->   keys <prefix>/<alg>/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>

So a bucket is a storage directory in all but name, and ``aws s3 sync`` of a
store to it (or back) is a valid copy.

Endpoint, region and credentials come from the standard AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, ``AWS_PROFILE``, ``~/.aws/credentials``...), read by boto3
itself, so kachery is configured like every other S3 tool.

Writes keep the rule of every kachery store: no object whose bytes do not
hash to its name is ever visible under that name. The writer has hashed the
bytes (a server while receiving them, a client when it stored them) and the
object store checks them again on arrival: ``x-amz-checksum-sha1`` for sha1
objects and ``Content-MD5`` for md5 objects, so bytes damaged or changed on
the way get 400 BadDigest and nothing is kept. An object too large for one
PUT goes up in parts, each with its own checksum, while the whole is hashed
once more; the upload is completed (made visible) only if that hash is the
name, and aborted otherwise.

boto3 was chosen over obstore by measurement (scripts/bench_s3.py, table in
docs/scale.md): same GET speed here, faster PUT, and obstore cannot send
``x-amz-checksum-sha1`` with a PUT, which the verification rule above needs.
"""

import base64
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .errors import (
    AccessDenied,
    HashMismatch,
    InvalidURL,
    ObjectNotFound,
    RemoteRejected,
    RemoteUnavailable,
)
from .hashing import is_valid_hash, validate_hash

#: Objects up to this size go up in one PUT; larger ones in parts of PART_SIZE.
SINGLE_PUT_MAX = 256 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024
#: Lifetime of presigned URLs handed to clients (a redirect is followed at once).
PRESIGN_SECONDS = 300
#: HEAD requests in flight at once when asking about a few objects ...
HEAD_THREADS = 16
#: ... and from this many on, listing is cheaper (see Bucket.has_many).
LIST_MIN = 32
#: Keys per LIST page (the S3 maximum), and LISTs in flight at once.
LIST_PAGE = 1000
LIST_THREADS = 8
#: Objects up to this size are PUT without asking first whether they are
#: there (``If-None-Match: *`` makes the store refuse a second copy).
ASK_FIRST_MIN = 1024 * 1024
QUARANTINE = "quarantine"
_READ_BLOCK = 1024 * 1024


def parse_bucket_url(url):
    """(bucket, prefix) of ``s3://bucket/prefix`` (prefix without slashes at its ends)."""
    if not url.startswith("s3://"):
        raise InvalidURL(url, "a bucket URL starts with s3://")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket or any(c in bucket for c in " ?#"):
        raise InvalidURL(url, "expected s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


class Bucket:
    """One bucket and prefix, read and written by hash. Thread safe (one boto3 client,
    rebuilt after a fork)."""

    def __init__(self, url, timeout=10.0):
        self.url = url.rstrip("/")
        self.name, self.prefix = parse_bucket_url(self.url)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client, self._pid = None, None

    def __repr__(self):
        return f"Bucket({self.url!r})"

    # ------------------------------------------------------------ plumbing

    @property
    def client(self):
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client, self._pid = _new_client(self.timeout), os.getpid()
            return self._client

    def key(self, algorithm, digest):
        digest = validate_hash(algorithm, digest)
        path = f"{algorithm}/{digest[0:2]}/{digest[2:4]}/{digest[4:6]}/{digest}"
        return f"{self.prefix}/{path}" if self.prefix else path

    def _call(self, what, method, **params):
        """``client.<method>(Bucket=..., **params)`` with errors made kachery's."""
        try:
            return getattr(self.client, method)(Bucket=self.name, **params)
        except Exception as error:
            raise self._translate(error, what) from None

    def _translate(self, error, what):
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
                return ObjectNotFound(what, self.url)
            if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId",
                                                "SignatureDoesNotMatch"):
                return AccessDenied(self.url, status or 403, code)
            if status == 412:
                return _AlreadyThere()
            if status >= 500 or status == 429:
                return RemoteUnavailable(self.url, f"HTTP {status} {code}")
            return RemoteRejected(self.url, status, f"{code}: {what}")
        if isinstance(error, NoCredentialsError):
            return AccessDenied(self.url, 401, "no S3 credentials (AWS_ACCESS_KEY_ID or ~/.aws)")
        if isinstance(error, (BotoCoreError, OSError)):
            return RemoteUnavailable(self.url, str(error))
        return error

    # --------------------------------------------------------------- reads

    def size(self, algorithm, digest):
        """Size of an object, or None when the bucket has none under that name."""
        try:
            head = self._call(f"{algorithm}://{digest}", "head_object", Key=self.key(algorithm, digest))
        except ObjectNotFound:
            return None
        return head["ContentLength"]

    def has_many(self, objects):
        """The subset of (algorithm, digest) pairs present.

        A few are asked with HEADs, several at once. Many are found by
        listing: keys come back sorted, so the wanted keys, sorted too, are
        merged with pages listed from just before the first unresolved one
        (``StartAfter``). Each page resolves every wanted key up to its last
        key, and at least one: 10,000 objects of a snapshot cost about ten
        LISTs instead of 10,000 HEADs (each ~2 ms of Python in boto3), and a
        few objects in a huge bucket never cost more than one LIST each.
        """
        objects = list(dict.fromkeys(objects))
        if len(objects) < LIST_MIN:
            if not objects:
                return set()
            with ThreadPoolExecutor(min(HEAD_THREADS, len(objects))) as pool:
                sizes = list(pool.map(lambda item: self.size(*item), objects))
            return {item for item, size in zip(objects, sizes) if size is not None}
        jobs = []
        for algorithm in sorted({algorithm for algorithm, _ in objects}):
            wanted = sorted((self.key(alg, digest), (alg, digest.lower()))
                            for alg, digest in objects if alg == algorithm)
            base = self.key(algorithm, "0" * len(wanted[0][1][1])).rsplit("/", 4)[0] + "/"
            # Contiguous runs of the sorted keys are listed on several
            # threads: a LIST spends most of its time waiting for the store.
            step = max(LIST_PAGE, -(-len(wanted) // LIST_THREADS))
            jobs += [(base, wanted[start:start + step]) for start in range(0, len(wanted), step)]
        with ThreadPoolExecutor(min(LIST_THREADS, len(jobs))) as pool:
            return set().union(*pool.map(lambda job: self._merge_listing(*job), jobs))

    def _merge_listing(self, base, wanted):
        found, index = set(), 0
        while index < len(wanted):
            page = self._call(f"listing {base}", "list_objects_v2", Prefix=base,
                              StartAfter=wanted[index][0][:-1], MaxKeys=LIST_PAGE)
            keys = {item["Key"] for item in page.get("Contents", [])}
            last = max(keys) if keys else None
            complete = not page.get("IsTruncated")
            while index < len(wanted) and (complete or wanted[index][0] <= last):
                if wanted[index][0] in keys:
                    found.add(wanted[index][1])
                index += 1
        return found

    def open(self, algorithm, digest, start=None, end=None):
        """(size of the body, a readable stream) of an object or its bytes [start, end)."""
        params = {"Key": self.key(algorithm, digest)}
        if start is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        answer = self._call(f"{algorithm}://{digest}", "get_object", **params)
        return answer["ContentLength"], _Body(answer["Body"], self)

    def read(self, algorithm, digest, start=None, end=None):
        size, body = self.open(algorithm, digest, start, end)
        with body:
            return body.read_exactly(size)

    def presigned_get(self, algorithm, digest, seconds=PRESIGN_SECONDS):
        """A URL anyone may GET (Range kept) for ``seconds``; no request is made."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.name, "Key": self.key(algorithm, digest)},
            ExpiresIn=seconds)

    def iter_objects(self, algorithm):
        """Yield (digest, size) of every object under ``<prefix>/<algorithm>/``."""
        base = f"{self.prefix}/{algorithm}/" if self.prefix else f"{algorithm}/"
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.name, Prefix=base):
                for item in page.get("Contents", []):
                    digest = item["Key"].rsplit("/", 1)[-1]
                    if is_valid_hash(algorithm, digest) and item["Key"] == self.key(algorithm, digest):
                        yield digest, item["Size"]
        except Exception as error:
            raise self._translate(error, f"listing {base}") from None

    def hash_object(self, algorithm, digest):
        """The digest of the bytes stored under the name, or None when absent."""
        try:
            _, body = self.open(algorithm, digest)
        except ObjectNotFound:
            return None
        hasher = hashlib.new(algorithm)
        with body:
            while block := body.read(_READ_BLOCK):
                hasher.update(block)
        return hasher.hexdigest()

    # -------------------------------------------------------------- writes

    def put(self, algorithm, digest, source, size=None, progress=None):
        """Write an object whose bytes the caller hashed to ``digest``; True if it is new.

        ``source`` is bytes or a file path. The store re-checks the bytes
        (see the module docstring): a mismatch raises RemoteRejected (400
        BadDigest) and nothing becomes visible. An object already there is
        left alone (``If-None-Match: *``) and gives False.
        """
        in_memory = isinstance(source, (bytes, bytearray, memoryview))
        size = len(source) if in_memory else (os.path.getsize(source) if size is None else size)
        if size >= ASK_FIRST_MIN and self.size(algorithm, digest) is not None:
            return False  # (a HEAD is cheap next to sending what is there)
        try:
            if size > SINGLE_PUT_MAX and not in_memory:
                self._put_parts(algorithm, digest, source, size, progress)
            else:
                self._put_once(algorithm, digest, source, size, in_memory)
                if progress:
                    progress(size)
        except _AlreadyThere:
            return False
        return True

    def _put_once(self, algorithm, digest, source, size, in_memory):
        params = {"Key": self.key(algorithm, digest), "ContentLength": size,
                  "IfNoneMatch": "*", **_checksum(algorithm, digest)}
        what = f"{algorithm}://{digest}"
        if in_memory:
            self._call(what, "put_object", Body=bytes(source), **params)
            return
        with open(source, "rb") as file:
            self._call(what, "put_object", Body=_Exactly(file, size), **params)

    def _put_parts(self, algorithm, digest, path, size, progress):
        """Multipart upload, each part checked by the store, completed only if
        the whole hashes to ``digest`` (the file may change while it is read)."""
        key, what = self.key(algorithm, digest), f"{algorithm}://{digest}"
        sha1_parts = algorithm == "sha1"
        extra = {"ChecksumAlgorithm": "SHA1"} if sha1_parts else {}
        upload_id = self._call(what, "create_multipart_upload", Key=key, **extra)["UploadId"]
        try:
            whole, parts = hashlib.new(algorithm), []
            with open(path, "rb", buffering=0) as file:
                for number in range(1, (size + PART_SIZE - 1) // PART_SIZE + 1):
                    data = file.read(min(PART_SIZE, size - (number - 1) * PART_SIZE))
                    whole.update(data)
                    check = {"ChecksumSHA1": _b64(hashlib.sha1(data).digest())} if sha1_parts \
                        else {"ContentMD5": _b64(hashlib.md5(data).digest())}
                    answer = self._call(what, "upload_part", Key=key, UploadId=upload_id,
                                        PartNumber=number, Body=data, **check)
                    part = {"PartNumber": number, "ETag": answer["ETag"]}
                    if sha1_parts:
                        part["ChecksumSHA1"] = check["ChecksumSHA1"]
                    parts.append(part)
                    if progress:
                        progress(len(data))
            if whole.hexdigest() != digest:
                raise HashMismatch(digest, whole.hexdigest(), f"upload of {path} (changed while read?)")
            self._call(what, "complete_multipart_upload", Key=key, UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.name, Key=key, UploadId=upload_id)
            except Exception:  # the store drops unfinished uploads by its own lifecycle too
                pass
            raise

    def quarantine(self, algorithm, digest):
        """Move an object to ``<prefix>/quarantine/<alg>/<h>``; return that key."""
        source = self.key(algorithm, digest)
        target = f"{self.prefix}/{QUARANTINE}/{algorithm}/{digest}".lstrip("/")
        what = f"{algorithm}://{digest}"
        self._call(what, "copy_object", Key=target, CopySource={"Bucket": self.name, "Key": source})
        self._call(what, "delete_object", Key=source)
        return target

    def delete(self, algorithm, digest):
        self._call(f"{algorithm}://{digest}", "delete_object", Key=self.key(algorithm, digest))


class _AlreadyThere(Exception):
    """412: another writer published the object first (same name, same bytes)."""


class _Body:
    """A streamed GET body: read(n), read_exactly(n), readinto(buffer); errors made kachery's."""

    def __init__(self, stream, bucket):
        self._stream, self._bucket = stream, bucket

    def read(self, count):
        try:
            return self._stream.read(count)
        except Exception as error:
            raise self._bucket._translate(error, "reading a body") from None

    def readinto(self, buffer):
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def read_exactly(self, count):
        parts, got = [], 0
        while got < count:
            block = self.read(min(_READ_BLOCK * 4, count - got))
            if not block:
                raise RemoteUnavailable(self._bucket.url, f"body ended after {got} of {count} bytes")
            parts.append(block)
            got += len(block)
        return b"".join(parts)

    def close(self):
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Exactly:
    """The first ``size`` bytes of an open file, as a body boto3 can send and
    re-send (a retry seeks back); never more, whatever the file grew to."""

    def __init__(self, file, size):
        self._file, self._size, self._start = file, size, file.tell()

    def read(self, count=-1):
        left = self._size - (self._file.tell() - self._start)
        if left <= 0:
            return b""
        return self._file.read(left if count is None or count < 0 else min(count, left))

    def seek(self, offset, whence=0):
        if whence == 0:
            return self._file.seek(self._start + offset) - self._start
        if whence == 2:
            return self._file.seek(self._start + self._size + offset) - self._start
        return self._file.seek(offset, whence) - self._start

    def tell(self):
        return self._file.tell() - self._start

    def __len__(self):
        return self._size


def _checksum(algorithm, digest):
    """The header by which the store re-checks a PUT body against its name."""
    raw = bytes.fromhex(digest)
    return {"ChecksumSHA1": _b64(raw)} if algorithm == "sha1" else {"ContentMD5": _b64(raw)}


def _b64(raw):
    return base64.b64encode(raw).decode("ascii")


def _new_client(timeout):
    import boto3
    from botocore.config import Config

    # A custom endpoint (MinIO, SeaweedFS, Ceph, R2...) is addressed by path:
    # virtual-host names need DNS for every bucket, which such stores rarely have.
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        connect_timeout=timeout, read_timeout=timeout, max_pool_connections=32,
        retries={"mode": "standard", "max_attempts": 3}, parameter_validation=False,
        s3={"addressing_style": "path" if custom else "auto"},
        # Checksums only where kachery asks for them (the store then verifies them).
        request_checksum_calculation="when_required", response_checksum_validation="when_required")
    session = boto3.session.Session()
    # kachery never reads the LastModified of a listing: parsing it with
    # dateutil was a third of the time of listing 10,000 keys.
    session._session.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=str)
    return session.client("s3", config=config)

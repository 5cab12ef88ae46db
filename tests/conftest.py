"""Shared fixtures: an isolated storage directory and config per test, and a
helper that runs the installed commands as real subprocesses."""

import os
import subprocess
import sys

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200)
settings.load_profile("ci")


@pytest.fixture
def storage_dir(tmp_path, monkeypatch):
    """A fresh, empty local store; the environment points every command at it."""
    root = tmp_path / "storage"
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(root))
    monkeypatch.setenv("KACHERY_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.delenv("KACHERY_REMOTE", raising=False)
    monkeypatch.delenv("KACHERY_TOKEN", raising=False)
    return root


def _command_path(name):
    """The installed console script, next to the running interpreter."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


@pytest.fixture
def run_cli():
    """run_cli('kachery-store', path, ...) -> CompletedProcess (bytes stdout/stderr)."""

    def run(name, *args, input=None, env=None, timeout=120, check=False):
        full_env = dict(os.environ, **(env or {}))
        result = subprocess.run(
            [_command_path(name), *map(str, args)],
            input=input, capture_output=True, env=full_env, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{name} {args} exited {result.returncode}: {result.stderr.decode()}"
            )
        return result

    return run


@pytest.fixture(scope="module", params=["kernel", "libfuse"])
def fuse_backend(request):
    """Run a mount test module once per FUSE backend (kachery-mount reads KACHERY_FUSE)."""
    previous = os.environ.get("KACHERY_FUSE")
    os.environ["KACHERY_FUSE"] = request.param
    yield request.param
    if previous is None:
        os.environ.pop("KACHERY_FUSE", None)
    else:
        os.environ["KACHERY_FUSE"] = previous


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A real S3 store (SeaweedFS) shared by the session's tests; see s3_helpers."""
    if os.environ.get("KACHERY_SKIP_S3") == "1":
        pytest.skip("KACHERY_SKIP_S3=1")
    from s3_helpers import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as store:
        yield store


@pytest.fixture
def s3_bucket(seaweed, monkeypatch):
    """A fresh bucket on the session's S3 store; the AWS_* environment points at it."""
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return seaweed.new_bucket()

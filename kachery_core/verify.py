"""Re-hash stored objects and report (optionally quarantine) corrupt ones."""

import os
from dataclasses import dataclass, field

from .hashing import new_hasher

QUARANTINE_DIR = "quarantine"
_BLOCK = 4 * 1024 * 1024


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list = field(default_factory=list)  # (algorithm, expected, got, path)
    quarantined: list = field(default_factory=list)  # new paths


def hash_file(path, algorithm, progress=None):
    """Hex digest of a file; ``progress(bytes)`` is told as it is read."""
    hasher = new_hasher(algorithm)
    with open(path, "rb", buffering=0) as file:
        while block := file.read(_BLOCK):
            hasher.update(block)
            if progress:
                progress(len(block))
    return hasher.hexdigest()


def verify_store(store, algorithms=("sha1", "md5"), quarantine=False, progress=None):
    """Re-hash every object of ``store``; return a VerifyReport.

    With ``quarantine`` a corrupt object is moved to ``<root>/quarantine/`` so
    that nothing is served from it any more (and a later store or download can
    put the right bytes back under its name). ``progress(bytes)`` is told of
    the bytes hashed as they are read.
    """
    report = VerifyReport()
    for algorithm in algorithms:
        for digest, path in store.iter_objects(algorithm):
            got = hash_file(path, algorithm, progress)
            report.checked += 1
            report.bytes += os.path.getsize(path)
            if got != digest:
                report.corrupt.append((algorithm, digest, got, path))
                if quarantine:
                    report.quarantined.append(move_to_quarantine(store.root, algorithm, path))
    return report


def move_to_quarantine(root, algorithm, path):
    """Move the object file ``path`` to ``<root>/quarantine/<alg>/``; return its new path."""
    target_dir = os.path.join(root, QUARANTINE_DIR, algorithm)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, os.path.basename(path))
    os.replace(path, target)
    return target

"""Where a hash URL appears under a mount (SPEC §6). Pure: no FUSE import.

``kachery-store --mount-path`` / ``kachery-info --mount-path`` use
:func:`mount_path`; the mount point comes from the caller or from
``$KACHERY_MOUNT``.
"""

import os

from kachery_core.errors import ConfigError
from kachery_core.urls import parse_url

#: Environment variable naming the mount point that paths are printed under.
MOUNT_ENV = "KACHERY_MOUNT"


def default_mountpoint(environ=None):
    """``$KACHERY_MOUNT`` as an absolute path, or None when unset."""
    value = (os.environ if environ is None else environ).get(MOUNT_ENV)
    return os.path.abspath(os.path.expanduser(value)) if value else None


def mount_path(url, mountpoint=None):
    """The path of ``url`` (a string or HashURL) under ``mountpoint``.

    ``sha1://H/x.csv`` → ``<mnt>/sha1/H``; ``sha1dir://H.lbl/a/b`` →
    ``<mnt>/sha1dir/H.lbl/a/b``. Raises InvalidURL, or ConfigError when no
    mount point is given and ``$KACHERY_MOUNT`` is unset.
    """
    parsed = parse_url(url) if isinstance(url, str) else url
    mountpoint = mountpoint or default_mountpoint()
    if not mountpoint:
        raise ConfigError(f"no mount point: pass one or set {MOUNT_ENV}")
    return os.path.join(mountpoint, parsed.mount_relpath())

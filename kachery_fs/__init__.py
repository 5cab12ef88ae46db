"""kachery_fs: the read-only FUSE mount of hash URLs (SPEC §6).

Modules: ``resolver`` (the namespace as plain Python), ``readers`` (where an
open file's bytes come from), ``fuse_adapter`` (the only FUSE import),
``mount`` (lifecycle), ``cli`` (commands) and ``locate`` (URL → mount path).
"""

from .locate import MOUNT_ENV, default_mountpoint, mount_path

__all__ = ["MOUNT_ENV", "default_mountpoint", "mount_path"]

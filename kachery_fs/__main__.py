"""``python -m kachery_fs MOUNTPOINT [options]``: the same as ``kachery-mount``."""

from .cli import mount_main

if __name__ == "__main__":
    mount_main()

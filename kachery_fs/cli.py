"""``kachery-mount`` / ``kachery-unmount`` (also ``kachery mount`` / ``kachery unmount``).

Thin click commands over :mod:`kachery_fs.mount`. Options come from the same
configuration as the other commands (``--storage-dir``, ``--remote``,
``KACHERY_*`` variables, the config file).
"""

import json
import logging
import os
import sys

import click

from kachery_cli.commands import common_options, entry_point, make_kachery
from kachery_cli.conventions import conventional
from kachery_core.settings import parse_size

from . import mount as lifecycle
from .locate import MOUNT_ENV


@conventional
@click.command("mount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--background", is_flag=True,
              help="Detach once mounted (default: stay in the foreground until Ctrl-C/SIGTERM).")
@click.option("--allow-other", is_flag=True,
              help="Let other users read the mount (non-root needs user_allow_other in /etc/fuse.conf).")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="Log of a --background mount (default: <storage-dir>/logs/mount.log).")
@click.option("--allow-non-empty", is_flag=True,
              help="Mount over a directory that has files (they are hidden while mounted).")
@click.option("--debug", is_flag=True, help="Log every FUSE request (very verbose).")
@click.option("--fuse", "backend", type=click.Choice(lifecycle.BACKENDS), default="kernel",
              envvar="KACHERY_FUSE", show_default=True,
              help="FUSE backend: the kernel protocol itself (passthrough reads, cached "
                   "listings) or libfuse (for systems where the first is not available).")
@click.option("--cache-max", metavar="SIZE",
              help="Quota of the download cache, e.g. 2G (default: cache_max in the config file).")
@click.option("--remote-timeout", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Give up on a remote after this long (default: remote_timeout, 10).")
@common_options
def mount_command(mountpoint, background, allow_other, allow_non_empty, log_file, debug, backend,
                  cache_max, remote_timeout, storage_dir, remotes):
    """Mount the hash-URL namespace at MOUNTPOINT (read-only).

    \b
    MOUNTPOINT/sha1/<hash>                        a stored file
    MOUNTPOINT/md5/<hash>                         a stored file (md5)
    MOUNTPOINT/sha1dir/<hash>[.<label>]/<path>    a stored directory snapshot
    """
    cache_max = parse_size(cache_max) if cache_max else None
    kachery = make_kachery(storage_dir, remotes, cache_max=cache_max, remote_timeout=remote_timeout)
    if debug:
        logging.getLogger("kachery").setLevel(logging.DEBUG)
    if background:
        log_file = log_file or os.path.join(kachery.config.storage_dir, "logs", "mount.log")
        arguments = _child_arguments(kachery, allow_other, debug) + ["--fuse", backend]
        if allow_non_empty:
            arguments.append("--allow-non-empty")
        pid = lifecycle.start_background(mountpoint, arguments, log_file, allow_non_empty)
        click.echo(f"kachery: mounted {mountpoint} (pid {pid}); "
                   f"unmount with: kachery-unmount {mountpoint}", err=True)
        return
    lifecycle.prepare_mountpoint(mountpoint, allow_non_empty)  # a bad one: no banner first
    # Ctrl-C is for someone at a terminal; a background daemon's log says how to stop it.
    how = "Ctrl-C to unmount" if sys.stderr.isatty() else f"unmount with: kachery-unmount {mountpoint}"
    click.echo(f"kachery: mounting {mountpoint} ({how}); "
               f"tip: export {MOUNT_ENV}={os.path.abspath(mountpoint)}", err=True)
    lifecycle.serve(kachery, mountpoint, allow_other=allow_other, debug=debug, backend=backend,
                    allow_non_empty=allow_non_empty)


def _child_arguments(kachery, allow_other, debug):
    """The foreground command line that a --background mount runs."""
    arguments = ["--storage-dir", kachery.config.storage_dir]
    for remote in kachery.config.remotes:
        arguments += ["--remote", remote.url]
    if kachery.config.cache_max is not None:
        arguments += ["--cache-max", str(kachery.config.cache_max)]
    arguments += ["--remote-timeout", str(kachery.config.remote_timeout)]
    if allow_other:
        arguments.append("--allow-other")
    if debug:
        arguments.append("--debug")
    return arguments


@conventional
@click.command("unmount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--lazy", is_flag=True, help="Detach now even if files are open (fusermount3 -u -z).")
def unmount_command(mountpoint, lazy):
    """Unmount a kachery mount (same as fusermount3 -u MOUNTPOINT)."""
    if not lifecycle.is_mounted(mountpoint):
        raise lifecycle.MountError(2, f"not mounted: {mountpoint}")
    lifecycle.unmount(mountpoint, lazy=lazy)


@conventional
@click.command("mounts")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
def mounts_command(as_json, storage_dir, remotes):
    """List the kachery mounts of this machine; with the fetch counters of
    those serving this storage directory."""
    from kachery_core.stats import read_stats_files

    kachery = make_kachery(storage_dir, remotes)
    counters = {stats.get("mountpoint"): (pid, stats) for pid, stats in
                read_stats_files(os.path.join(kachery.config.storage_dir, "logs")).items()}
    rows = []
    for mountpoint in lifecycle.kachery_mounts():
        pid, stats = counters.get(mountpoint, (None, {}))
        row = {"mountpoint": mountpoint, "pid": pid,
               "storage_dir": kachery.config.storage_dir if pid else None}
        row.update({key: stats[key] for key in ("bytes_fetched", "cache_hits", "cache_misses")
                    if key in stats})
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        served = f"  (pid {row['pid']}, {row['storage_dir']})" if row["pid"] else ""
        click.echo(f"{row['mountpoint']}{served}")


mount_main = entry_point(mount_command, "kachery-mount")
unmount_main = entry_point(unmount_command, "kachery-unmount")

"""The standard commands: kachery-store, -load, -info, -ls, -cat, -verify.

Each is a thin click command over kachery_core, also reachable as
``kachery <name>``. Data goes to stdout; progress, warnings and errors go to
stderr (see exit_codes.py for the error contract).
"""

import errno
import functools
import json
import os
import sys

import click

from kachery_core.client import DirTarget, Kachery
from kachery_core.settings import load_config
from kachery_core.urls import dir_url, gateway_link, parse_url

from . import interrupt
from .conventions import QUIET, configure_logging, conventional
from .exit_codes import ExitStatus, StdoutError, run_click_command
from .exit_codes import _silence_stdout as silence_stdout
from .progress import Progress, human_size, total_size
from .show import print_records


def make_kachery(storage_dir=None, remotes=(), **overrides):
    """A Kachery from the configuration, with command-line overrides applied
    (``overrides`` are Config fields; None means "not given")."""
    config = load_config()
    if remotes:
        config = config.with_remote_urls(remotes)
    return Kachery(config.with_overrides(storage_dir=storage_dir, **overrides))


def common_options(command):
    """--storage-dir and --remote, shared by every command."""
    command = click.option(
        "--remote", "remotes", multiple=True, metavar="URL",
        help="Remote to use (repeatable; replaces KACHERY_REMOTE / the config file).",
    )(command)
    return click.option(
        "--storage-dir", type=click.Path(file_okay=False),
        help="Local store (default: $KACHERY_STORAGE_DIR, the config file, ~/kachery-storage).",
    )(command)


def mount_point_option(command):
    return click.option(
        "--mount-point", type=click.Path(file_okay=False),
        help="Mount point for mount paths (default: $KACHERY_MOUNT).",
    )(command)


def locate_under_mount(url, mount_point):
    """Path of ``url`` under the mount (kachery_fs.locate is pure: no FUSE import)."""
    from kachery_fs.locate import mount_path

    return mount_path(url, mount_point)


def stops_at_once(function):
    """Ctrl-C and SIGTERM end the command at once, with nothing partial left
    (exit 130 / 143; see interrupt.py). Innermost decorator: runs when the
    command starts, after click parsed its options."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        interrupt.install()
        return function(*args, **kwargs)
    return run


def link_option(command):
    return click.option(
        "--link", is_flag=True,
        help="Print web gateway links (on the first http(s) remote) instead of hash URLs.",
    )(command)


def gateway_server(kachery):
    """Base URL of the first http(s) remote: the kachery server whose gateway
    the --link addresses point at."""
    for remote in kachery.config.remotes:
        if remote.url.startswith(("http://", "https://")):
            return remote.url
    raise ValueError("--link needs a kachery server among the remotes (--remote URL or KACHERY_REMOTE)")


# -------------------------------------------------------------------- store

@conventional
@click.command("store")
@click.argument("paths", nargs=-1, type=click.Path(allow_dash=True))
@click.option("-n", "--only-hash", is_flag=True, help="Print the URLs; store nothing.")
@click.option("--algorithm", type=click.Choice(["sha1", "md5"]), default="sha1",
              show_default=True, help="Hash for files (directories are always sha1dir).")
@click.option("--label", help="Label for directory URLs (default: the directory's name).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON record per path.")
@click.option("--upload", is_flag=True, help="Also upload to the first remote.")
@click.option("--upload-only", is_flag=True, help="Upload without keeping a local copy.")
@click.option("--mount-path", is_flag=True,
              help="Print each path under the kachery mount instead of the URL.")
@mount_point_option
@link_option
@common_options
@stops_at_once
def store_command(paths, only_hash, algorithm, label, as_json, upload, upload_only, mount_path,
                  mount_point, link, storage_dir, remotes):
    """Store files and directories; print one URL per PATH.

    PATH - (or no PATH, with standard input not a terminal) stores standard
    input; its URL has no file name."""
    if not paths:
        if not _stdin_is_data():
            raise click.UsageError("give the files or directories to store (- for standard input)")
        paths = ("-",)
    if label is not None and "/" in label:  # SPEC §1: it would read as a path in the URL
        raise ValueError(f"--label {label!r}: a label may not contain '/'")
    if label is not None:
        for path in paths:
            if path == "-" or not os.path.isdir(path):
                raise ValueError(f"--label names snapshots of directories, and {path} is not one")
    if only_hash and (upload or upload_only):
        raise click.UsageError("--only-hash stores nothing, so it uploads nothing")
    kachery = make_kachery(storage_dir, remotes)
    server = gateway_server(kachery) if link else None  # before any work: a usage error
    progress = Progress.maybe("hashing" if only_hash else "storing", lambda: total_size(paths))

    def store_all(batch):
        records = [_store_one(kachery, batch, path, algorithm, label, progress) for path in paths]
        if progress:
            progress.close()  # (before the upload's own progress line)
        return records

    if only_hash:
        from kachery_core.ingest import HashOnly

        records = store_all(HashOnly())
    elif upload or upload_only:
        from kachery_core.upload import store_and_upload

        from kachery_core.upload import UploadSummary

        sending = Progress.maybe("uploading")
        summary = UploadSummary()
        records = store_and_upload(kachery, store_all, keep_local=not upload_only, progress=sending,
                                   summary=summary)
        if sending:
            sending.close()
        if not QUIET["on"]:
            click.echo(f"kachery: {summary} (to {kachery.remotes.upload_remote.url})", err=True)
    else:
        with kachery.batch() as batch:
            records = store_all(batch)
    for record in records:
        if mount_path:
            record["mount_path"] = locate_under_mount(record["url"], mount_point)
        if link:
            record["link"] = gateway_link(record["url"], server)
        shown = record["mount_path"] if mount_path else record["link"] if link else record["url"]
        click.echo(json.dumps(record) if as_json else shown)


def _stdin_is_data():
    """Whether standard input is a pipe or a file (`... | kachery-store`), not
    a terminal or /dev/null: then no PATH means "store standard input"."""
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # closed or absent
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _store_one(kachery, batch, path, algorithm, label, progress):
    if path == "-":
        stored = kachery.store_file("/dev/stdin", algorithm, batch, progress)
        record = {"path": "-", "url": stored.url(), "size": stored.size, algorithm: stored.digest}
        if stored.manifest:
            record["manifest"] = stored.manifest
        return record
    name = os.path.basename(os.path.abspath(path))
    if os.path.isdir(path):
        digest, tree = kachery.store_dir(path, batch, progress)
        url = dir_url(digest, label if label is not None else name)
        files, size = tree.count()
        return {"path": path, "url": url, "sha1dir": digest, "files": files, "size": size}
    stored = kachery.store_file(path, algorithm, batch, progress)
    record = {"path": path, "url": stored.url(name), "size": stored.size,
              algorithm: stored.digest}
    if stored.manifest:
        record["manifest"] = stored.manifest
    return record


# --------------------------------------------------------------------- load

@conventional
@click.command("load")
@click.argument("url")
@click.option("--dest", type=click.Path(allow_dash=True),
              help="Copy the file (or directory) here; into it when it is a directory; - for stdout.")
@click.option("--start", type=click.IntRange(min=0),
              help="Only the bytes from here (needs --dest; a file URL).")
@click.option("--end", type=click.IntRange(min=0),
              help="Only the bytes before here, exclusive (needs --dest; a file URL).")
@common_options
@stops_at_once
def load_command(url, dest, start, end, storage_dir, remotes):
    """Fetch a file or a whole snapshot directory; print its local path.

    Without --dest a file's path is in the store or the download cache (read
    it, do not change it) and a snapshot is copied to ./<its name>. With
    --dest, an existing directory receives the copy under the URL's name (as
    cp does); --dest - writes a file to stdout. With --start/--end, only that
    byte range is fetched (chunk by chunk from a remote, for a large file with
    a file manifest) and written to --dest.
    """
    from kachery_core.export import export_dir, export_file, export_range

    ranged = start is not None or end is not None
    if ranged and not dest:
        raise ValueError("--start/--end write a byte range to a file: give --dest "
                         "(or use kachery-cat --start/--end)")
    if ranged and end is not None and end < (start or 0):
        raise ValueError(f"--end {end} is before --start {start or 0}")
    kachery = make_kachery(storage_dir, remotes)
    parsed = parse_url(url)
    target = kachery.resolve(parsed)
    if dest == "-":
        if isinstance(target, DirTarget):
            raise ValueError(f"{url} is a directory: it cannot go to standard output (give --dest DIR)")
        end = target.size if end is None else min(end, target.size)
        _write_to_stdout(kachery, target, min(start or 0, end), end)
        return
    if dest and os.path.isdir(dest):
        dest = os.path.join(dest, _default_dir_name(parsed) if isinstance(target, DirTarget)
                            else _file_name(parsed))
    if ranged:
        if isinstance(target, DirTarget):
            raise ValueError(f"{url} is a directory: --start/--end need a file")
        end = target.size if end is None else min(end, target.size)
        start = min(start or 0, end)
        click.echo(os.path.abspath(export_range(kachery, target, dest, start, end)))
        return
    if isinstance(target, DirTarget):
        dest = dest or _default_dir_name(target.url)
        count, total = target.entry.count()
        progress = Progress.maybe("loading", total)
        click.echo(os.path.abspath(export_dir(kachery, target.entry, dest, progress)))
        return
    receiving = _download_progress(kachery, target)
    if dest:
        path = export_file(kachery, target, dest)
    else:
        path = kachery.file_path(target)
    if receiving:
        receiving.close()
    click.echo(os.path.abspath(path))


def _download_progress(kachery, target):
    """A download progress bar on the remotes, when a terminal shows it and a download is due."""
    if not sys.stderr.isatty() or kachery.find_local(target.algorithm, target.digest):
        return None
    progress = Progress.maybe("downloading", target.size)
    if progress and kachery.remotes:
        kachery.remotes.progress = progress
        return progress
    return None


def _default_dir_name(url):
    if url.path:
        return url.path_parts[-1]
    return url.name or url.hash


def _file_name(url):
    """The name a file URL gives its file: its path's last part, else the hash."""
    return url.path_parts[-1] if url.path_parts else (url.name or url.hash)


# --------------------------------------------------------------------- info

@conventional
@click.command("info")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (an object; a list for several URLs).")
@mount_point_option
@common_options
@stops_at_once
def info_command(urls, as_json, mount_point, storage_dir, remotes):
    """Show what a URL names: path, size, hashes (or a directory's totals).
    Nothing is downloaded: remote files are described by a HEAD or their manifest.

    With a mount point (--mount-point or $KACHERY_MOUNT) it also gives
    "mount_path", the URL's path under the kachery mount.
    """
    from kachery_core.api import file_info
    from kachery_fs.locate import default_mountpoint

    kachery = make_kachery(storage_dir, remotes)
    records = []
    for url in urls:
        info = file_info(kachery, url)
        if mount_point or default_mountpoint():
            info["mount_path"] = locate_under_mount(url, mount_point)
        records.append(info)
    print_records(records, as_json)


# ----------------------------------------------------------------------- ls

@functools.partial(conventional, help_names=("--help",))  # -h: human sizes, as ls
@click.command("ls")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("-l", "long", is_flag=True, help="Show sizes.")
@click.option("-h", "--human-readable", "human", is_flag=True, help="Sizes as 1.5 MiB (with -l).")
@click.option("-R", "--recursive", is_flag=True, help="The whole tree, as paths below URL.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of entries.")
@link_option
@common_options
@stops_at_once
def ls_command(urls, long, human, recursive, as_json, link, storage_dir, remotes):
    """List snapshot directories; directories end with '/'.

    With several URLs, each listing starts with 'URL:' (as ls does). With
    --link, a listing starts with the directory's own gateway link and each
    entry is shown as its link."""
    kachery = make_kachery(storage_dir, remotes)
    server = gateway_server(kachery) if link else None
    listings = []
    for url in urls:  # resolve all first: an error prints nothing half-listed
        target = kachery.resolve_dir(url)
        entries = _entries(target.url, target.entry, recursive)
        if link:
            for item in entries:
                item["link"] = gateway_link(item["url"], server) + ("/" if item["type"] == "dir" else "")
        listings.append((url, target, entries))
    if as_json:
        shown = listings[0][2] if len(urls) == 1 else {url: entries for url, _, entries in listings}
        click.echo(json.dumps(shown, indent=2))
        return
    try:
        for index, (url, target, entries) in enumerate(listings):
            if len(listings) > 1:
                click.echo(("\n" if index else "") + f"{url}:")
            if link:
                click.echo(gateway_link(target.url, server) + "/")
            for item in entries:
                suffix = "/" if item["type"] == "dir" else ""
                size = human_size(item["size"]) if human else str(item["size"])
                prefix = f"{size:>14}  " if long else ""
                shown = item["link"] if link else f"{item['name']}{suffix}"
                click.echo(f"{prefix}{shown}")
    except BrokenPipeError:  # `kachery-ls URL | head`: see cat_command
        silence_stdout()


def _entries(url, entry, recursive=False, prefix=""):
    """The entries of a snapshot directory, sorted by name; with ``recursive``
    those of its subdirectories too, named by their path below it."""
    items = []
    for name, sub in entry.dirs.items():
        files, size = sub.count()
        items.append({"name": prefix + name, "type": "dir", "size": size, "files": files,
                      "url": str(url.child(name)), "_entry": sub})
    for name, file in entry.files.items():
        algorithm, digest = file.algorithm_and_hash
        item = {"name": prefix + name, "type": "file", "size": file.size, algorithm: digest,
                "url": str(url.child(name))}
        if file.manifest:
            item["manifest"] = file.manifest
        items.append(item)
    items.sort(key=lambda item: item["name"])
    listed = []
    for item in items:
        sub = item.pop("_entry", None)
        listed.append(item)
        if recursive and sub is not None:
            listed += _entries(url.child(item["name"][len(prefix):]), sub, True, item["name"] + "/")
    return listed


# ---------------------------------------------------------------------- cat

@conventional
@click.command("cat")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("--start", type=click.IntRange(min=0), default=0, help="First byte (default 0).")
@click.option("--end", type=click.IntRange(min=0), help="End byte, exclusive (default: size).")
@common_options
@stops_at_once
def cat_command(urls, start, end, storage_dir, remotes):
    """Write files' bytes (or each one's range [start, end)) to stdout, streamed,
    one after the other. On a terminal, stderr shows the bytes written so far."""
    if end is not None and end < start:
        raise ValueError(f"--end {end} is before --start {start}")  # one line, exit 2
    kachery = make_kachery(storage_dir, remotes)
    targets = [kachery.resolve_file(url) for url in urls]  # a bad URL: nothing written
    ranges = [(target, *_clamp(target, start, end)) for target in targets]
    progress = Progress.maybe("reading", sum(stop - first for _, first, stop in ranges))
    for target, first, stop in ranges:
        _write_to_stdout(kachery, target, first, stop, progress)
    if progress:
        progress.close()


def _clamp(target, start, end):
    stop = target.size if end is None else min(end, target.size)
    return min(start, stop), stop


def _write_to_stdout(kachery, target, start, end, progress=None):
    if sys.stdout is None:  # started with stdout closed (`kachery-cat URL >&-`)
        raise OSError("cannot write to standard output: it is closed")
    sys.stdout.flush()
    try:
        for block in _cat_blocks(kachery, target, start, end, progress):
            sys.stdout.buffer.write(block)
            if progress:
                progress(len(block))
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The reader went away (`kachery-cat URL | head`): not an error. Handled
        # here because click turns an EPIPE that leaves the command into exit 1.
        silence_stdout()
        sys.exit(ExitStatus.OK)
    except OSError as error:
        if error.errno not in _WRITE_ERRORS:  # a read error names its own file
            raise
        raise StdoutError(error.errno, os.strerror(error.errno)) from None


#: errno values of a write(2) or sendfile(2) to stdout that failed on the stdout side.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EBADF}


def _cat_blocks(kachery, target, start, end, progress=None):
    """The blocks kachery-cat writes; a whole file is hashed as it streams and
    its last block held back until it matches (exit 3 otherwise): a copy in
    the store may have rotted, and the chunks of a file manifest may each be
    right while their whole is not the file the URL names. Cached copies are
    verified when the process first finds them (cache.py), so they, and byte
    ranges, are sent as they are."""
    from kachery_core.hashing import file_blocks, verified_blocks

    whole = start == 0 and end == target.size
    in_store = kachery.store.has(target.algorithm, target.digest)
    if in_store or not target.manifest:
        receiving = None if in_store else _download_progress(kachery, target)
        path = kachery.file_path(target)  # (a remote file without a manifest: downloaded whole)
        if receiving:
            receiving.close()
        if not (whole and in_store):
            _send_file(path, start, end, sys.stdout.fileno(), progress)
            return iter(())
        blocks = file_blocks(path)
    else:
        blocks = kachery.iter_bytes(target, start, end)
    if not whole:
        return blocks
    return verified_blocks(blocks, target.algorithm, target.digest,
                           f"{target.algorithm}://{target.digest}")


def _send_file(path, start, end, out_fd, progress=None):
    """Copy [start, end) of a file to out_fd in the kernel where it can;
    ``progress(bytes)`` is told after each step (16 MiB: a few per second)."""
    with open(path, "rb") as file:
        offset = start
        while offset < end:
            try:
                sent = os.sendfile(out_fd, file.fileno(), offset, min(end - offset, 1 << 24))
            except OSError:  # e.g. a terminal or other fd sendfile refuses
                return _copy_range(file, offset, end, out_fd, progress)
            if sent == 0:
                break
            offset += sent
            if progress:
                progress(sent)


def _copy_range(file, offset, end, out_fd, progress=None):
    file.seek(offset)
    while offset < end:
        block = file.read(min(1 << 20, end - offset))
        if not block:
            break
        view = memoryview(block)
        while view:
            view = view[os.write(out_fd, view):]
        offset += len(block)
        if progress:
            progress(len(block))


# ------------------------------------------------------------------- verify

@conventional
@click.command("verify")
@click.option("--quarantine", is_flag=True, help="Move corrupt objects to <storage>/quarantine/.")
@click.option("--clean-temp", is_flag=True, help="Also delete temp files of killed processes.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary (checked, bytes, corrupt, quarantined, temp files removed).")
@common_options
@stops_at_once
def verify_command(quarantine, clean_temp, as_json, storage_dir, remotes):
    """Re-hash every stored object and cached download; report corrupt ones (exit 3 if any)."""
    from kachery_core.verify import verify_store

    kachery = make_kachery(storage_dir, remotes)
    if not os.path.isdir(kachery.store.root):
        raise FileNotFoundError(errno.ENOENT, "storage directory does not exist", kachery.store.root)
    areas = (kachery.store, kachery.cache)  # what you stored, and verified downloads
    removed = sum(area.remove_stale_temps(older_than=3600) for area in areas) if clean_temp else None
    if removed is not None and not as_json:
        click.echo(f"removed {removed} stale temp file(s)", err=True)
    progress = Progress.maybe("verifying", lambda: sum(_stored_bytes(area) for area in areas))
    reports = [(area, verify_store(area, quarantine=quarantine, progress=progress)) for area in areas]
    if progress:
        progress.close()
    summary = _verify_summary(reports, removed)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_verify_reports(reports, quarantine)
    if summary["corrupt"]:
        sys.exit(ExitStatus.CORRUPT)


def _verify_summary(reports, removed):
    """kachery-verify --json: totals over the store and the cache, and each one's counts."""
    return {
        "checked": sum(report.checked for _, report in reports),
        "bytes": sum(report.bytes for _, report in reports),
        "corrupt": [{"url": f"{algorithm}://{expected}", "content_hash": got, "path": path}
                    for _, report in reports for algorithm, expected, got, path in report.corrupt],
        "quarantined": [path for _, report in reports for path in report.quarantined],
        "temp_files_removed": removed,  # null without --clean-temp
        "areas": [{"root": area.root, "checked": report.checked, "bytes": report.bytes,
                   "corrupt": len(report.corrupt)} for area, report in reports],
    }


def _print_verify_reports(reports, quarantine):
    for area, report in reports:
        for algorithm, expected, got, path in report.corrupt:
            click.echo(f"CORRUPT {algorithm}://{expected} (content hashes to {got}): {path}")
        click.echo(f"{area.root}: checked {report.checked} object(s), {human_size(report.bytes)}, "
                   f"{len(report.corrupt)} corrupt"
                   + (f", {len(report.quarantined)} quarantined" if quarantine else ""), err=True)


def _stored_bytes(area):
    total = 0
    for algorithm in ("sha1", "md5"):
        for _, path in area.iter_objects(algorithm):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
    return total


# ------------------------------------------------------------------- config

@conventional
@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@stops_at_once
def config_command(as_json, storage_dir, remotes):
    """Show the effective configuration: storage directory, config file, remotes."""
    from kachery_core.settings import config_file_path

    config = make_kachery(storage_dir, remotes).config
    print_records([{
        "storage_dir": config.storage_dir,
        "config_file": config_file_path(),
        "remotes": [remote.url for remote in config.remotes],
        "cache_max": config.cache_max,
    }], as_json)


# -------------------------------------------------------------------- cache

@conventional
@click.command("cache")
@click.option("--clear", is_flag=True, help="Delete everything in the download cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@stops_at_once
def cache_command(clear, as_json, storage_dir, remotes):
    """Show the download cache's usage; --clear empties it.

    The cache holds verified downloads from remotes; objects you stored
    yourself are never in it and never evicted. "mounts" shows the fetch
    counters of running mounts of this store (bytes fetched, cache hits and
    misses, verification failures).
    """
    from kachery_core.stats import read_stats_files

    kachery = make_kachery(storage_dir, remotes)
    cache = kachery.cache
    freed = cache.clear() if clear else 0
    if clear:
        cache.remove_stale_temps()  # partial downloads of killed processes
    objects, used = cache.usage()
    mounts = read_stats_files(os.path.join(kachery.config.storage_dir, "logs"))
    report = {"cache_dir": cache.root, "objects": objects, "bytes": used,
              "max_bytes": cache.max_bytes, "mounts": list(mounts.values())}
    if clear:
        report["freed_bytes"] = freed
    print_records([report], as_json)


COMMANDS = {
    "store": store_command, "load": load_command, "info": info_command,
    "ls": ls_command, "cat": cat_command, "verify": verify_command, "config": config_command,
    "cache": cache_command,
}


def entry_point(command, name):
    """A console-script function running ``command`` under our error contract."""
    def main():
        configure_logging()
        run_click_command(command, name)
    return main


store_main = entry_point(store_command, "kachery-store")
load_main = entry_point(load_command, "kachery-load")
info_main = entry_point(info_command, "kachery-info")
ls_main = entry_point(ls_command, "kachery-ls")
cat_main = entry_point(cat_command, "kachery-cat")
verify_main = entry_point(verify_command, "kachery-verify")

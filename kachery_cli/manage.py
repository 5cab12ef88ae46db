"""Store management: ``kachery du`` (what the store and the download cache
hold) and ``kachery rm`` (reclaim space without deleting files by hand)."""

import os

import click

from kachery_core.errors import InvalidURL, ObjectNotFound
from kachery_core.settings import format_size
from kachery_core.urls import parse_url

from .commands import common_options, make_kachery, stops_at_once
from .conventions import QUIET, conventional
from .show import print_records

ALGORITHMS = ("sha1", "md5")


@conventional
@click.command("du")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@common_options
@stops_at_once
def du_command(as_json, storage_dir, remotes):
    """Show how much the local store and the download cache hold.

    The store holds what you stored (never evicted); the cache holds verified
    downloads (evicted under cache_max, emptied by `kachery cache --clear`).
    Temp files are those of running or killed writers."""
    kachery = make_kachery(storage_dir, remotes)
    record = {"storage_dir": kachery.store.root}
    for name, area in (("store", kachery.store), ("cache", kachery.cache)):
        objects, size = _usage(area)
        record[f"{name}_objects"] = objects
        record[f"{name}_bytes"] = size
    record["temp_bytes"] = sum(_tree_bytes(os.path.join(area.root, "tmp"))
                               for area in (kachery.store, kachery.cache))
    print_records([record], as_json)


def _usage(area):
    objects = size = 0
    for algorithm in ALGORITHMS:
        for _, path in area.iter_objects(algorithm):
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:  # removed meanwhile
                continue
            objects += 1
    return objects, size


def _tree_bytes(root):
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass
    return total


@conventional
@click.command("rm")
@click.argument("urls", nargs=-1, required=True, metavar="URL...")
@click.option("-r", "--recursive", is_flag=True,
              help="For a snapshot URL: also every file object below it.")
@click.option("-n", "--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@common_options
@stops_at_once
def rm_command(urls, recursive, dry_run, storage_dir, remotes):
    """Remove objects from the local store and the download cache.

    A file URL removes that file's object (and its ?manifest=). A snapshot
    URL needs -r: it removes the snapshot's manifest and the objects of every
    file in it, also those that other snapshots share (they are then fetched
    again from a remote, or missing). Remotes are never touched."""
    kachery = make_kachery(storage_dir, remotes)
    objects = []  # (algorithm, digest), in order, without repeats
    for url in urls:  # all checked before anything is removed
        for key in _objects_of(kachery, url, recursive):
            if key not in objects:
                objects.append(key)
    removed = freed = 0
    for algorithm, digest in objects:
        for area in (kachery.store, kachery.cache):
            size = area.size(algorithm, digest)
            if size is None:
                continue
            if not dry_run:
                area.remove(algorithm, digest)
            removed += 1
            freed += size
    if not QUIET["on"]:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"kachery: {verb} {removed} object(s), {format_size(freed)}", err=True)


def _objects_of(kachery, text, recursive):
    """The local objects a URL names; ObjectNotFound when none is here."""
    url = parse_url(text)
    if not url.is_dir:
        keys = [(url.algorithm, url.hash)] + ([("sha1", url.manifest)] if url.manifest else [])
        if not any(_is_local(kachery, *key) for key in keys):
            raise ObjectNotFound(text, kachery.store.root)
        return keys
    if not recursive:
        raise InvalidURL(text, "a snapshot: give -r to remove it and the objects of its files")
    if not _is_local(kachery, "sha1", url.hash):
        raise ObjectNotFound(text, kachery.store.root)
    node = kachery.dir_manifest(url.hash).lookup(url.path_parts)
    if node is None:
        raise ObjectNotFound(text, "the snapshot")
    keys = [("sha1", url.hash)] if not url.path_parts else []
    pending = [node]
    while pending:  # a loop, not recursion: trees may nest deeply
        entry = pending.pop()
        files = entry.files.values() if hasattr(entry, "files") else [entry]
        for file in files:
            keys.append(file.algorithm_and_hash)
            if file.manifest:
                keys.append(("sha1", file.manifest))
        pending.extend(getattr(entry, "dirs", {}).values())
    return keys


def _is_local(kachery, algorithm, digest):
    return kachery.store.has(algorithm, digest) or kachery.cache.size(algorithm, digest) is not None

"""The libfuse backend (``kachery-mount --fuse libfuse``): the only module that
imports the FUSE binding (mfusepy).

:class:`KacheryOperations` turns libfuse's callbacks into :class:`Resolver`
calls; exceptions become errno values through :func:`errnos.errno_for`
(with a log line for every EIO). The default backend speaks the kernel
protocol itself (:mod:`kernel_adapter`); this one stays for systems where
that path is not available.

Content is immutable, so the mount lets the kernel cache everything it can
(see :func:`mount_options`): page cache kept across opens, day-long entry and
attribute timeouts, and READDIRPLUS replies that carry each entry's full
attributes, so ``ls -lR`` needs no per-file round trip and ``find`` gets each
entry's type from the listing itself. Listings are packed into C structures
once per directory and kept (:class:`PackedListing`).
"""

import ctypes
import ctypes.util
import errno
import functools
import itertools
import logging
import os
import threading

from cachetools import LRUCache

from .errnos import errno_for
from .resolver import BLOCK_SIZE


def _prefer_libfuse3():
    """mfusepy loads libfuse 2 when both are installed unless told otherwise.

    libfuse 3 allows 1 MiB kernel requests (libfuse 2: 128 KiB), so pick it
    explicitly; an explicit FUSE_LIBRARY_PATH from the user still wins.
    """
    if not os.environ.get("FUSE_LIBRARY_PATH"):
        found = ctypes.util.find_library("fuse3")
        if found:
            os.environ["FUSE_LIBRARY_PATH"] = found


_prefer_libfuse3()
import mfusepy  # noqa: E402  (must come after choosing the library)

log = logging.getLogger("kachery.mount")

#: Kernel caching of names and attributes (seconds): content never changes.
CACHE_TIMEOUT = 24 * 3600.0
#: Largest kernel readahead we ask for (the kernel's offer caps it).
MAX_READAHEAD = 1 << 20
#: Directory entries kept ready for the kernel (about 200 bytes each).
LISTING_CACHE_ENTRIES = 250_000

# libfuse 3 constants (fuse_common.h, fuse.h).
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14
FUSE_READDIR_PLUS = 1 << 0
FUSE_FILL_DIR_PLUS = 1 << 1

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT | os.O_APPEND


def _mapped(operation):
    """Run a FUSE operation; re-raise any failure as FuseOSError(errno_for(...))."""

    @functools.wraps(operation)
    def run(self, *args):
        try:
            return operation(self, *args)
        except mfusepy.FuseOSError:
            raise
        except Exception as error:
            code = errno_for(error)
            if code == errno.EIO:
                log.error("EIO on %s %s: %s", operation.__name__, args[0] if args else "", error)
            raise mfusepy.FuseOSError(code) from error

    return run


def _read_only(*_args):
    raise mfusepy.FuseOSError(errno.EROFS)


class PackedListing:
    """A directory's entries as the kernel wants them: encoded names and C stats.

    Built once per directory and cached (directories never change), so
    listing it again costs one C call per entry.
    """

    __slots__ = ("names", "stats")

    def __init__(self, children, uid, gid):
        self.names = [name.encode("utf-8", "surrogateescape") for name, _ in children]
        self.stats = stats = (mfusepy.c_stat * len(children))()
        # Entries of one directory share owner, block size and times: copy a
        # filled template (a C struct copy) and set only what differs.
        template = mfusepy.c_stat()
        fill_stat(template, children[0][1], uid, gid)
        for index, (_, entry) in enumerate(children):
            stats[index] = template
            if entry.mtime_ns == children[0][1].mtime_ns:
                _fill_identity(stats[index], entry)
            else:
                fill_stat(stats[index], entry, uid, gid)

    def __len__(self):
        return len(self.names)


class KacheryOperations(mfusepy.Operations):
    """FUSE callbacks over a Resolver. Use with :class:`KacheryFUSE`.

    ``getattr`` returns the resolver's Entry (not a dict) and directories are
    listed through :meth:`listing`; KacheryFUSE fills the C structures.
    """

    use_ns = True
    # Reads and releases come with the handle; libfuse need not build paths.
    flag_nopath = True
    flag_nullpath_ok = True

    def __init__(self, resolver, listing_entries=LISTING_CACHE_ENTRIES, on_ready=None):
        self.resolver = resolver
        self.on_ready = on_ready
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._dirs = {}
        self._dir_numbers = itertools.count(1)
        self._listings = LRUCache(maxsize=listing_entries, getsizeof=len)
        self._announced = LRUCache(maxsize=listing_entries)
        self._lock = threading.Lock()

    def init_with_config(self, conn, config):
        """Ask for large readahead and READDIRPLUS on every listing chunk."""
        if conn is not None:
            conn.max_readahead = MAX_READAHEAD
            conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        if self.on_ready:
            self.on_ready()

    def destroy(self, path):
        self.resolver.close_all()

    # ----------------------------------------------------------- metadata

    @_mapped
    def getattr(self, path, fh=None):
        if path is None:  # fstat on an open file whose node has no path
            return self.resolver.entry_of(fh)
        # A LOOKUP means the kernel lacks this entry: list its parent in full again.
        self.forget_announced(path.rpartition("/")[0] or "/")
        return self.resolver.lookup(path)

    @_mapped
    def opendir(self, path):
        entry = self.resolver.lookup(path)
        if not entry.is_dir:
            raise NotADirectoryError(path)
        number = next(self._dir_numbers)
        self._dirs[number] = (path, entry)
        return number

    @_mapped
    def readdir(self, path, fh):
        """Names only (kept for completeness; KacheryFUSE uses listing())."""
        return [name.decode("utf-8", "surrogateescape") for name in self.listing(fh)[1].names]

    def listing(self, fh):
        """(path, PackedListing) of an open directory, "." and ".." first."""
        path, entry = self._dirs[fh]
        with self._lock:
            packed = self._listings.get(path)
        if packed is None:
            children = [(".", entry), ("..", entry)] + self.resolver.children(path, entry)
            packed = PackedListing(children, self.uid, self.gid)
            with self._lock:
                self._listings[path] = packed
        return path, packed

    def releasedir(self, path, fh):
        self._dirs.pop(fh, None)
        return 0

    # Directories whose entries the kernel already received with attributes:
    # listing them again needs names and types only (no inode work on either side).

    def was_announced(self, path):
        with self._lock:
            return path in self._announced

    def mark_announced(self, path):
        with self._lock:
            self._announced[path] = True

    def forget_announced(self, path):
        with self._lock:
            self._announced.pop(path, None)

    # -------------------------------------------------------------- files

    @_mapped
    def open(self, path, flags):
        if flags & _WRITE_FLAGS:
            raise mfusepy.FuseOSError(errno.EROFS)
        return self.resolver.open(path)

    @_mapped
    def read(self, path, size, offset, fh):
        return self.resolver.read(fh, size, offset)

    @_mapped
    def read_into(self, fh, address, size, offset):
        """Copy up to ``size`` bytes at ``offset`` into the C buffer at ``address``.

        Bytes in a local file are ``preadv``'d straight into the buffer (no
        Python bytes object, one copy fewer than mfusepy's read); others come
        from the reader's ``read``. Returns the number of bytes.
        """
        span = self.resolver.span(fh, size, offset)
        if span is None:  # bytes, or a memoryview of bytes held in memory
            data = self.resolver.read(fh, size, offset)
            if data:
                target = (ctypes.c_char * len(data)).from_address(address)
                memoryview(target).cast("B")[:] = data
            return len(data)
        fd, position, length = span
        if not length:
            return 0
        return os.preadv(fd, [(ctypes.c_char * length).from_address(address)], position)

    def release(self, path, fh):
        self.resolver.release(fh)
        return 0

    def statfs(self, path):
        return {"f_bsize": BLOCK_SIZE, "f_frsize": BLOCK_SIZE, "f_namemax": 255}

    # Read-only (the mount is also "ro", so the kernel refuses most of these first).
    chmod = chown = create = link = mkdir = mknod = _read_only
    removexattr = rename = rmdir = setxattr = symlink = _read_only
    truncate = unlink = utimens = write = _read_only


class KacheryFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with getattr and readdir filled from resolver Entries.

    - getattr fills the stat structure directly from an Entry;
    - read copies into libfuse's buffer without a Python bytes object;
    - readdir answers READDIRPLUS with full attributes (mfusepy passes only
      the file type), so the kernel learns every entry's attributes from the
      listing instead of one LOOKUP per file. Once the kernel has them, later
      listings of the directory send names and types only (libfuse's
      high-level API cannot let the kernel cache listings itself).
    """

    def fgetattr(self, path, buf, fip):
        fh = fip.contents.fh if fip else None
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        entry = self.operations.getattr(decoded, fh)
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        fill_stat(buf.contents, entry, self.operations.uid, self.operations.gid)
        return 0

    def read(self, path, buf, size, offset, fip):
        # Straight into libfuse's reply buffer (see KacheryOperations.read_into).
        return self.operations.read_into(fip.contents.fh, ctypes.addressof(buf.contents), size, offset)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags):
        ops = self.operations
        dir_path, packed = ops.listing(fip.contents.fh)
        plus = bool(flags & FUSE_READDIR_PLUS) and not ops.was_announced(dir_path)
        end = _fill(filler, buf, packed, offset, FUSE_FILL_DIR_PLUS if plus else 0)
        if plus and end == len(packed):
            ops.mark_announced(dir_path)
        return 0


def _fill(filler, buf, packed, offset, plus_flag):
    """Hand entries from ``offset`` to libfuse until its buffer is full; return where it stopped."""
    names, stats = packed.names, packed.stats
    for index in range(offset, len(names)):
        flag = plus_flag if index > 1 else 0  # never for "." and ".."
        if filler(buf, names[index], ctypes.byref(stats[index]), index + 1, flag):
            return index
    return len(names)


def fill_stat(st, entry, uid, gid):
    """Write an Entry's attributes into a C ``struct stat``."""
    _fill_identity(st, entry)
    st.st_uid = uid
    st.st_gid = gid
    st.st_blksize = BLOCK_SIZE
    seconds, nanoseconds = divmod(entry.mtime_ns, 1_000_000_000)
    for stamp in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
        stamp.tv_sec = seconds
        stamp.tv_nsec = nanoseconds


def _fill_identity(st, entry):
    """The fields that differ between entries of one directory."""
    st.st_mode = entry.mode
    st.st_ino = entry.inode
    st.st_nlink = entry.nlink
    st.st_size = entry.size
    st.st_blocks = (entry.size + 511) // 512  # du counts 512-byte blocks


def mount_options(allow_other=False, debug=False):
    """Keyword options for KacheryFUSE (libfuse -o options), as a dict."""
    options = dict(
        fsname="kachery",
        subtype="kachery",
        ro=True,
        default_permissions=True,
        kernel_cache=True,  # keep page cache across opens: bytes never change
        entry_timeout=CACHE_TIMEOUT,
        attr_timeout=CACHE_TIMEOUT,
        negative_timeout=0,  # an object stored later must appear at once
        use_ino=True,  # stable inode numbers from the resolver
        auto_unmount=True,  # fusermount3 unmounts even if the daemon is killed
        max_idle_threads=8,  # unset, libfuse 3.14 warns "invalid max threads value"
    )
    if allow_other:
        options["allow_other"] = True
    if debug:
        options["debug"] = True
    return options


def run_fuse(resolver, mountpoint, allow_other=False, debug=False, on_ready=None):
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM/SIGHUP).

    ``on_ready()`` is called once the kernel has connected (it must not touch
    the mount itself: the kernel waits for it to return). libfuse installs the
    signal handlers and unmounts before returning.
    """
    operations = KacheryOperations(resolver, on_ready=on_ready)
    KacheryFUSE(
        operations,
        mountpoint,
        foreground=True,
        **mount_options(allow_other, debug),
    )

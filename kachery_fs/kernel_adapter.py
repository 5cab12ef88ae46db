"""The kernel-protocol backend (the default): kachery's file system on /dev/fuse itself.

No libfuse: :class:`KernelFileSystem` reads the kernel's requests
(:mod:`kernel_protocol`) from a :class:`kernel_channel.Channel` on a pool of
threads and answers them from the same :class:`Resolver` as the libfuse
backend. Speaking the protocol directly is what lets the mount

- hand reads of complete local objects (the store, whole objects in the
  download cache) to the kernel: **passthrough** — the OPEN reply names a
  backing file and no READ for it ever reaches this process, mmap included.
  It needs CAP_SYS_ADMIN; without it (or on an older kernel, or for any
  error) files are served as before. One inode is never open in both modes
  at once (the kernel would answer EIO): while it is open one way, new opens
  of it go the same way;
- let the kernel cache listings: OPENDIR is answered ENOSYS, so the kernel
  opens directories without asking and keeps their entries in its page cache
  (``FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE``, the kernel's defaults for
  "no opendir"); a repeated ``find`` sends nothing here. Listings are
  READDIRPLUS replies, so each entry arrives with its attributes;
- release a reader the moment it is interrupted or killed (INTERRUPT is
  answered EINTR at once; the fetch behind it finishes in the background and
  its reply is dropped);
- drop the cached pages of a lazily read file whose whole fails its hash
  (FUSE_NOTIFY_INVAL_INODE), so no later read is served from them.

Node ids are the resolver's stable path inodes; the kernel's lookup counts
are kept per node and a node is forgotten when the kernel forgets it, so
memory follows what the kernel caches, not what was ever browsed.
"""

import errno
import logging
import os
import queue
import signal
import threading

from cachetools import LRUCache

from kachery_core.errors import HashMismatch

from . import kernel_protocol as fk
from .errnos import errno_for
from .kernel_channel import REQUEST_BUFFER, connect
from .resolver import BLOCK_SIZE

log = logging.getLogger("kachery.mount")

#: Kernel caching of names and attributes (seconds): content never changes.
CACHE_TIMEOUT = 24 * 3600
#: Largest READ request (pages of 4 KiB): 1 MiB, the size of a chunk read.
MAX_PAGES = 256
#: Background requests (readahead) the kernel may have in flight at once.
MAX_BACKGROUND = 32
#: Worker threads: a few wait for requests; more are started while all are busy.
MIN_WORKERS = 4
MAX_WORKERS = 48
#: Directory entries kept packed for the kernel (about 200 bytes each).
LISTING_CACHE_ENTRIES = 250_000
#: Entries of a listing's first part sent with attributes to programs not
#: known to stat what they list; and the file lookups that make a program known.
PLUS_PROBE = 32
STATTER_LOOKUPS = 16
#: Passthrough backing files may sit on a file system one level stacked (overlayfs).
MAX_STACK_DEPTH = 1

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT | os.O_APPEND
# READDIRPLUS_AUTO: the kernel asks for attributes with a listing only when
# the program also stats the entries (ls -l does, find -type f does not).
_WANTED_INIT_FLAGS = (fk.ASYNC_READ | fk.BIG_WRITES | fk.DO_READDIRPLUS | fk.READDIRPLUS_AUTO
                      | fk.PARALLEL_DIROPS | fk.MAX_PAGES | fk.INIT_EXT)
#: Extended attribute namespaces this file system does not have at all. Saying
#: so (EOPNOTSUPP, not ENODATA) lets ls -l stop asking for SELinux labels and
#: ACLs after the first file, instead of two round trips per file.
_UNSUPPORTED_XATTRS = ("security.", "system.", "trusted.")


class _Node:
    """What the kernel knows by one node id: a name in a parent node, its Entry,
    and how many lookups the kernel holds. The path is built when asked (a
    node keeps the listing's name string, not a path of its own: memory for
    100,000 nodes is a third less)."""

    __slots__ = ("parent", "name", "entry", "lookups")

    def __init__(self, parent, name, entry):
        self.parent = parent
        self.name = name
        self.entry = entry
        self.lookups = 0

    @property
    def path(self):
        if self.parent is None:
            return self.name
        return _join(self.parent.path, self.name)


class _Listing:
    """A directory's entries, "." and ".." first: names, Entries and packed
    dirents (what a plain READDIR sends), in three lists."""

    __slots__ = ("names", "entries", "dirents")

    def __init__(self, names, entries, dirents):
        self.names = names
        self.entries = entries
        self.dirents = dirents

    def __len__(self):
        return len(self.names)


class _Open:
    """Opens of one inode: all passthrough (sharing one backing id) or all served."""

    __slots__ = ("backing_id", "count")

    def __init__(self, backing_id):
        self.backing_id = backing_id
        self.count = 0


class KernelFileSystem:
    """Answers the kernel's requests from a Resolver. See the module docstring."""

    def __init__(self, resolver, channel, debug=False, on_ready=None):
        self.resolver = resolver
        self.channel = channel
        self.debug = debug
        self.on_ready = on_ready
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.passthrough = False  # decided at INIT and by the first backing open
        root = resolver.lookup("/")
        self._nodes = {fk.ROOT_ID: _Node(None, "/", root)}
        self._nodes[fk.ROOT_ID].lookups = 1  # the kernel never forgets the root
        self._nodes_lock = threading.Lock()
        # Both LRU caches reorder themselves on every read: guarded by one lock.
        self._listings = LRUCache(maxsize=LISTING_CACHE_ENTRIES, getsizeof=len)
        self._file_lookups = LRUCache(maxsize=1024)  # pid -> files it looked up (see _readdirplus)
        self._caches_lock = threading.Lock()
        self._opens = {}  # nodeid -> _Open
        self._handles = {}  # fh -> nodeid
        self._opens_lock = threading.Lock()
        self._pending = set()  # uniques of requests not answered yet
        self._pending_lock = threading.Lock()
        self._invalidations = queue.SimpleQueue()
        self._workers = 0
        self._idle = 0
        self._workers_lock = threading.Lock()
        self.finished = threading.Event()
        self.stats = resolver.kachery.stats  # mount_reads, mount_passthrough_opens, ...
        self.threads = []
        self._handlers = {
            fk.LOOKUP: self._lookup, fk.GETATTR: self._getattr, fk.OPEN: self._open,
            fk.READ: self._read, fk.RELEASE: self._release, fk.STATFS: self._statfs,
            fk.READDIR: self._readdir, fk.READDIRPLUS: self._readdirplus,
            fk.GETXATTR: self._getxattr, fk.LISTXATTR: self._listxattr,
            fk.DESTROY: self._destroy,
        }
        self._local = threading.local()

    # ------------------------------------------------------------ serving

    def serve(self):
        """Negotiate INIT, then answer requests on worker threads until unmounted."""
        buffer = bytearray(REQUEST_BUFFER)
        length = self.channel.receive(buffer)
        if not length:
            raise OSError(errno.ENODEV, "the kernel closed the connection before INIT")
        self._init(memoryview(buffer)[:length])
        threading.Thread(target=self._invalidate_forever, name="kachery-inval", daemon=True).start()
        for _ in range(MIN_WORKERS):
            self._start_worker()
        if self.on_ready:
            self.on_ready()

    def _start_worker(self):
        with self._workers_lock:
            if self._workers >= MAX_WORKERS:
                return
            self._workers += 1
        thread = threading.Thread(target=self._work, name="kachery-fuse", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _work(self):
        buffer = bytearray(REQUEST_BUFFER)
        view = memoryview(buffer)
        while not self.finished.is_set():
            with self._workers_lock:
                self._idle += 1
            length = self.channel.receive(buffer)
            with self._workers_lock:
                self._idle -= 1
                grow = self._idle == 0 and self._workers < MAX_WORKERS
            if not length:
                break
            if grow:  # every other worker is busy (a slow fetch, say): one more listens
                self._start_worker()
            self._dispatch(view[:length])
        self.finished.set()

    def _dispatch(self, request):
        _, opcode, unique, nodeid, _, _, pid, _, _ = fk.IN_HEADER.unpack_from(request)
        body = request[fk.IN_HEADER.size:]
        if self.debug:
            log.debug("request %d: opcode %d node %d", unique, opcode, nodeid)
        if opcode == fk.FORGET:
            self._forget(nodeid, fk.FORGET_IN.unpack_from(body)[0])
            return
        if opcode == fk.BATCH_FORGET:
            self._batch_forget(body)
            return
        if opcode == fk.INTERRUPT:
            self._interrupt(unique, fk.INTERRUPT_IN.unpack_from(body)[0])
            return
        handler = self._handlers.get(opcode)
        if handler is None:
            # Among them OPENDIR (see the module docstring), FLUSH and ACCESS:
            # after one ENOSYS the kernel stops sending them.
            self.channel.send([fk.error_reply(unique, errno.ENOSYS)])
            return
        with self._pending_lock:
            self._pending.add(unique)
        try:
            parts = handler(nodeid, body, pid)
        except Exception as error:  # every failure becomes one errno for the kernel
            code = errno_for(error)
            if code == errno.EIO:
                log.error("EIO on request %d for %s: %s", opcode, self._describe(nodeid), error)
            if isinstance(error, HashMismatch):
                self._invalidations.put(nodeid)
            self._answer(unique, [fk.error_reply(unique, code)])
            return
        self._answer(unique, [fk.reply_header(unique, sum(len(part) for part in parts)), *parts])

    def _answer(self, unique, parts):
        """Send a reply unless the request was answered already (interrupted)."""
        with self._pending_lock:
            if unique not in self._pending:
                return
            self._pending.discard(unique)
        self.channel.send(parts)

    def _interrupt(self, interrupt_unique, unique):
        """Release the interrupted caller at once with EINTR; its work goes on unseen."""
        with self._pending_lock:
            pending = unique in self._pending
            self._pending.discard(unique)
        if pending:
            self.channel.send([fk.error_reply(unique, errno.EINTR)])
        else:  # not read yet by a worker, or already answered: the kernel retries or drops it
            self.channel.send([fk.error_reply(interrupt_unique, errno.EAGAIN)])

    def _invalidate_forever(self):
        while True:
            self.channel.invalidate(self._invalidations.get())

    def _describe(self, nodeid):
        node = self._nodes.get(nodeid)
        return node.path if node else f"node {nodeid}"

    # --------------------------------------------------------------- INIT

    def _init(self, request):
        _, opcode, unique, *_ = fk.IN_HEADER.unpack_from(request)
        if opcode != fk.INIT:
            raise OSError(errno.EPROTO, f"expected INIT from the kernel, got opcode {opcode}")
        major, minor, max_readahead, flags, flags2 = fk.INIT_IN.unpack_from(request, fk.IN_HEADER.size)
        offered = flags | (flags2 << 32 if flags & fk.INIT_EXT else 0)
        if major != fk.MAJOR or minor < 31:
            raise OSError(errno.EPROTO, f"kernel FUSE protocol {major}.{minor} is too old (need 7.31)")
        wanted = _WANTED_INIT_FLAGS | (fk.PASSTHROUGH if _may_pass_through() else 0)
        chosen = offered & wanted
        self.passthrough = bool(chosen & fk.PASSTHROUGH)
        body = fk.INIT_OUT.pack(
            fk.MAJOR, min(minor, fk.MINOR), max_readahead, chosen & 0xFFFFFFFF,
            MAX_BACKGROUND, MAX_BACKGROUND * 3 // 4, 4096, 1, MAX_PAGES, 0,
            chosen >> 32, MAX_STACK_DEPTH if self.passthrough else 0, 0)
        self.channel.send([fk.reply_header(unique, len(body)), body])
        log.info("kernel FUSE protocol %d.%d; passthrough %s", major, minor,
                 "offered" if self.passthrough else "not available")

    # ---------------------------------------------------------- nodes

    def _node(self, nodeid):
        node = self._nodes.get(nodeid)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, f"unknown node {nodeid}")
        return node

    def _remember(self, parent, name, entry):
        """Count one kernel lookup of ``name`` in the node ``parent``; its node id."""
        nodeid = entry.inode
        with self._nodes_lock:
            node = self._nodes.get(nodeid)
            if node is None:
                node = self._nodes[nodeid] = _Node(parent, name, entry)
            node.lookups += 1
        return nodeid

    def _remember_all(self, parent, listing, indexes):
        """Count one kernel lookup of each entry ``indexes`` of ``parent``'s listing."""
        nodes, names, entries = self._nodes, listing.names, listing.entries
        with self._nodes_lock:
            for index in indexes:
                entry = entries[index]
                node = nodes.get(entry.inode)
                if node is None:
                    node = nodes[entry.inode] = _Node(parent, names[index], entry)
                node.lookups += 1

    def _forget(self, nodeid, count):
        with self._nodes_lock:
            node = self._nodes.get(nodeid)
            if node is not None and nodeid != fk.ROOT_ID:
                node.lookups -= count
                if node.lookups <= 0:
                    del self._nodes[nodeid]

    def _batch_forget(self, body):
        count, _ = fk.BATCH_FORGET_IN.unpack_from(body)
        for index in range(count):
            nodeid, lookups = fk.FORGET_ONE.unpack_from(body, fk.BATCH_FORGET_IN.size + index * 16)
            self._forget(nodeid, lookups)

    def node_count(self):
        return len(self._nodes)

    def _attr(self, entry):
        return fk.pack_attr(entry.inode, entry.size, entry.mode, entry.nlink,
                            self.uid, self.gid, entry.mtime_ns, BLOCK_SIZE)

    # ------------------------------------------------------ metadata

    def _lookup(self, parent, body, pid):
        name = bytes(body).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        parent = self._node(parent)
        path = _join(parent.path, name)
        entry = self.resolver.lookup(path)
        if not entry.is_dir:
            with self._caches_lock:
                self._file_lookups[pid] = self._file_lookups.get(pid, 0) + 1
        return [fk.pack_entry(self._remember(parent, name, entry), self._attr(entry), CACHE_TIMEOUT)]

    def _getattr(self, nodeid, body, _pid):
        entry = self._node(nodeid).entry
        return [fk.ATTR_OUT_PREFIX.pack(CACHE_TIMEOUT, 0, 0), self._attr(entry)]

    def _statfs(self, nodeid, body, _pid):
        return [fk.STATFS_OUT.pack(0, 0, 0, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE, 0)]

    # ------------------------------------------------------- listings

    def _readdir(self, nodeid, body, _pid):
        return self._list(nodeid, body, plus=False)

    def _readdirplus(self, nodeid, body, pid):
        # The kernel asks for attributes with the first part of every listing
        # (and later parts once the program has looked entries up). Programs
        # that never stat the entries (find, os.walk: the type comes with the
        # name) get a first part of PLUS_PROBE entries, and the rest without
        # attributes: the kernel then creates no inode per file. Programs seen
        # looking files up (ls -l) get attributes for everything at once.
        with self._caches_lock:
            statter = self._file_lookups.get(pid, 0) >= STATTER_LOOKUPS
        return self._list(nodeid, body, plus=True, limit=None if statter else PLUS_PROBE)

    def _list(self, nodeid, body, plus, limit=None):
        """Entries from the read's offset while they fit in its size (offsets are indexes + 1).

        The hot loop of a fresh ``find`` or ``ls -lR`` (the kernel asks for
        up to 1 MiB at a time): one struct call per entry, one lock per reply.
        """
        _, offset, size, _ = fk.READ_IN.unpack_from(body)
        node = self._node(nodeid)
        listing = self._listing(node)
        entries, dirents = listing.entries, listing.dirents
        records, used, announced = [], 0, []
        pack_plus, uid, gid = fk.ENTRY_AND_ATTR.pack, self.uid, self.gid
        end = len(listing) if limit is None or offset else min(len(listing), limit)
        for index in range(offset, end):
            entry, record = entries[index], dirents[index]
            if plus:
                if index < 2:  # "." and "..": the kernel takes no lookup of them
                    record = _EMPTY_ENTRY + record
                else:
                    ino, length = entry.inode, entry.size
                    seconds, nanoseconds = divmod(entry.mtime_ns, 1_000_000_000)
                    record = pack_plus(
                        ino, 0, CACHE_TIMEOUT, CACHE_TIMEOUT, 0, 0,
                        ino, length, (length + 511) >> 9, seconds, seconds, seconds,
                        nanoseconds, nanoseconds, nanoseconds,
                        entry.mode, entry.nlink, uid, gid, 0, BLOCK_SIZE, 0) + record
                    announced.append(index)
            if used + len(record) > size:
                if announced and announced[-1] == index:
                    announced.pop()
                break
            records.append(record)
            used += len(record)
        if announced:
            self._remember_all(node, listing, announced)
        return records

    def _listing(self, node):
        """The :class:`_Listing` of a directory node (built once, then cached)."""
        path = node.path
        with self._caches_lock:
            listing = self._listings.get(path)
        if listing is None:
            if not node.entry.is_dir:
                raise NotADirectoryError(path)
            children = self.resolver.children(path, node.entry)
            names = [".", ".."] + [name for name, _ in children]
            entries = [node.entry, node.entry] + [entry for _, entry in children]
            pack = fk.pack_dirent
            dirents = [pack(entry.inode, index, name.encode("utf-8", "surrogateescape"), entry.mode)
                       for index, (name, entry) in enumerate(zip(names, entries), start=1)]
            listing = _Listing(names, entries, dirents)
            with self._caches_lock:
                self._listings[path] = listing
        return listing

    # ---------------------------------------------------------- files

    def _open(self, nodeid, body, _pid):
        flags, _ = fk.OPEN_IN.unpack_from(body)
        if flags & _WRITE_FLAGS:
            raise OSError(errno.EROFS, "read-only file system")
        node = self._node(nodeid)
        handle = self.resolver.open(node.path)
        backing_id = self._choose_mode(nodeid, self.resolver.local_fd(handle))
        with self._opens_lock:
            self._handles[handle] = nodeid
        if backing_id is None:
            self.stats.add("mount_served_opens")
            return [fk.OPEN_OUT.pack(handle, fk.FOPEN_KEEP_CACHE, 0)]
        self.stats.add("mount_passthrough_opens")
        return [fk.OPEN_OUT.pack(handle, fk.FOPEN_PASSTHROUGH, backing_id)]

    def _choose_mode(self, nodeid, local_fd):
        """The backing id for a passthrough open of ``nodeid``, or None to serve it.

        An inode already open keeps its mode; otherwise a local file goes
        through when the kernel lets us register it.
        """
        with self._opens_lock:
            opened = self._opens.get(nodeid)
            if opened is None:
                backing_id = None
                if self.passthrough and local_fd is not None:
                    backing_id = self._open_backing(local_fd)
                opened = self._opens[nodeid] = _Open(backing_id)
            opened.count += 1
            return opened.backing_id

    def _open_backing(self, fd):
        try:
            return self.channel.open_backing(fd)
        except OSError as error:
            if error.errno == errno.EPERM:  # no CAP_SYS_ADMIN: it will not change
                log.info("passthrough not permitted (needs CAP_SYS_ADMIN); serving reads")
                self.passthrough = False
            else:
                log.info("passthrough refused (%s); serving this file's reads", error)
            return None

    def _read(self, nodeid, body, _pid):
        handle, offset, size, _ = fk.READ_IN.unpack_from(body)
        self.stats.add("mount_reads")
        span = self.resolver.span(handle, size, offset)
        if span is None:
            data = self.resolver.read(handle, size, offset)
            return [data] if data else []
        fd, position, length = span
        buffer = self._read_buffer(length)
        count = os.preadv(fd, [buffer], position) if length else 0
        return [buffer[:count]]

    def _read_buffer(self, length):
        """A per-thread buffer of at least ``length`` bytes (as a memoryview of that length)."""
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < length:
            buffer = self._local.buffer = bytearray(max(length, MAX_PAGES * 4096))
        return memoryview(buffer)[:length]

    def _release(self, nodeid, body, _pid):
        (handle,) = fk.RELEASE_IN.unpack_from(body)
        with self._opens_lock:
            # Before the release: a handle is a descriptor number, free for
            # the next open once the reader is closed.
            nodeid = self._handles.pop(handle, nodeid)
            opened = self._opens.get(nodeid)
            if opened is not None:
                opened.count -= 1
                if opened.count <= 0:
                    del self._opens[nodeid]
                    if opened.backing_id is not None:
                        self.channel.close_backing(opened.backing_id)
        self.resolver.release(handle)
        return []

    # -------------------------------------------------------- xattrs

    def _getxattr(self, nodeid, body, _pid):
        size, _ = fk.GETXATTR_IN.unpack_from(body)
        name = bytes(body[fk.GETXATTR_IN.size:]).split(b"\0", 1)[0].decode("utf-8", "replace")
        if name.startswith(_UNSUPPORTED_XATTRS):
            raise OSError(errno.EOPNOTSUPP, name)
        value = self.resolver.xattrs(self._node(nodeid).path).get(name)
        if value is None:
            raise OSError(errno.ENODATA, name)
        return _sized(value.encode(), size)

    def _listxattr(self, nodeid, body, _pid):
        size, _ = fk.GETXATTR_IN.unpack_from(body)
        names = self.resolver.xattrs(self._node(nodeid).path)
        return _sized(b"".join(name.encode() + b"\0" for name in names), size)

    def _destroy(self, nodeid, body, _pid):
        self.finished.set()
        return []


_EMPTY_ENTRY = bytes(fk.ENTRY_PREFIX.size + fk.ATTR.size)


def _sized(value, size):
    """A GETXATTR/LISTXATTR answer: the size asked about (size 0), the value, or ERANGE."""
    if size == 0:
        return [fk.GETXATTR_OUT.pack(len(value), 0)]
    if len(value) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return [value]


def _join(parent, name):
    return parent.rstrip("/") + "/" + name


def _may_pass_through():
    """False when the user turned passthrough off (KACHERY_PASSTHROUGH=0)."""
    return os.environ.get("KACHERY_PASSTHROUGH", "1") not in ("0", "false", "no", "off")


def run_kernel(resolver, mountpoint, allow_other=False, debug=False, on_ready=None):
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM/SIGHUP); then unmount."""
    channel = connect(mountpoint, allow_other=allow_other)
    filesystem = KernelFileSystem(resolver, channel, debug=debug, on_ready=on_ready)

    def stop(signum, frame):
        log.info("signal %d: unmounting %s", signum, mountpoint)
        filesystem.finished.set()

    previous = {signum: signal.signal(signum, stop)
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        filesystem.serve()
        while not filesystem.finished.wait(1.0):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        channel.unmount()
        # Workers end once the kernel ends the connection (at once, unless
        # files are still open on the lazily detached mount): only then may
        # the descriptor be closed; otherwise the process exit closes it.
        finished = all(_joined(thread, 2.0) for thread in list(filesystem.threads))
        resolver.close_all()
        channel.close(descriptor=finished)
    return filesystem


def _joined(thread, timeout):
    thread.join(timeout)
    return not thread.is_alive()

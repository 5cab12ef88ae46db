"""The FUSE kernel protocol (``include/uapi/linux/fuse.h``): numbers and byte layouts.

Pure: no I/O. Every message from the kernel starts with an input header
(:data:`IN_HEADER`), every reply with an output header (:data:`OUT_HEADER`);
the structures after them are packed here with :mod:`struct` (little-endian,
the layouts of fuse.h, all padded to 8 bytes). Only what a read-only file
system needs is named; every other opcode is answered ENOSYS.
"""

import stat
import struct

#: The protocol we speak: 7.40 added passthrough (backing ids in open replies).
MAJOR = 7
MINOR = 40
ROOT_ID = 1

# Opcodes (enum fuse_opcode).
LOOKUP = 1
FORGET = 2
GETATTR = 3
OPEN = 14
READ = 15
STATFS = 17
RELEASE = 18
FLUSH = 25
GETXATTR = 22
LISTXATTR = 23
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
ACCESS = 34
INTERRUPT = 36
DESTROY = 38
BATCH_FORGET = 42
READDIRPLUS = 44

#: Requests the kernel sends without expecting a reply.
NO_REPLY = frozenset((FORGET, BATCH_FORGET))

# INIT flags (the first 32 bits in ``flags``, the rest in ``flags2``).
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37

# Open reply flags (FOPEN_*).
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_PASSTHROUGH = 1 << 7

#: Notification code of "drop the cached pages of this inode".
NOTIFY_INVAL_INODE = 2

# ioctls on /dev/fuse: _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32).
DEV_IOC_BACKING_OPEN = 0x4010E501
DEV_IOC_BACKING_CLOSE = 0x4004E502

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_PREFIX = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid (nsecs); fuse_attr follows
#: A fuse_entry_out with its fuse_attr, packed in one call (the READDIRPLUS hot loop).
ENTRY_AND_ATTR = struct.Struct(ENTRY_PREFIX.format + ATTR.format[1:])
ATTR_OUT_PREFIX = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy; fuse_attr follows
OPEN_IN = struct.Struct("<II")  # flags open_flags
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQII")  # fh offset size read_flags (lock_owner, flags follow)
RELEASE_IN = struct.Struct("<Q")  # fh
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count dummy
FORGET_ONE = struct.Struct("<QQ")  # nodeid nlookup
GETXATTR_IN = struct.Struct("<II")  # size padding
GETXATTR_OUT = struct.Struct("<II")
INTERRUPT_IN = struct.Struct("<Q")  # unique
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")  # ino off namelen type
INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino off len
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding

#: An interrupt's unique is its request's with this bit set.
INT_REQ_BIT = 1


def dirent_type(mode):
    """The d_type of a mode (DT_DIR / DT_REG): the type field of a dirent."""
    return stat.S_IFMT(mode) >> 12


def pack_attr(ino, size, mode, nlink, uid, gid, mtime_ns, blksize):
    """A ``struct fuse_attr`` (atime = mtime = ctime: content never changes)."""
    seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
    blocks = (size + 511) // 512  # du counts 512-byte blocks
    return ATTR.pack(ino, size, blocks, seconds, seconds, seconds,
                     nanoseconds, nanoseconds, nanoseconds,
                     mode, nlink, uid, gid, 0, blksize, 0)


def pack_entry(nodeid, attr, timeout):
    """A ``struct fuse_entry_out`` for ``attr`` (packed by pack_attr), valid ``timeout`` seconds."""
    return ENTRY_PREFIX.pack(nodeid, 0, timeout, timeout, 0, 0) + attr


def pack_dirent(ino, next_offset, name, mode):
    """A ``struct fuse_dirent`` and its name, padded to 8 bytes."""
    layout = _DIRENT_LAYOUTS.get(len(name))
    if layout is None:
        padding = -(DIRENT.size + len(name)) % 8
        layout = _DIRENT_LAYOUTS[len(name)] = struct.Struct(f"<QQII{len(name)}s{padding}x")
    return layout.pack(ino, next_offset, len(name), (mode & 0o170000) >> 12, name)


#: One Struct per name length: a dirent with its name and padding in one call.
_DIRENT_LAYOUTS = {}


def unpack_dirents(data):
    """[(ino, next_offset, name, type)] of a READDIR reply (for tests and tools)."""
    found, position = [], 0
    while position < len(data):
        ino, offset, length, kind = DIRENT.unpack_from(data, position)
        start = position + DIRENT.size
        found.append((ino, offset, bytes(data[start:start + length]), kind))
        position = start + length + (-(DIRENT.size + length) % 8)
    return found


def error_reply(unique, code):
    """A reply carrying only ``-code`` (a positive errno value)."""
    return OUT_HEADER.pack(OUT_HEADER.size, -code, unique)


def reply_header(unique, body_length):
    """The header of a successful reply whose body is ``body_length`` bytes."""
    return OUT_HEADER.pack(OUT_HEADER.size + body_length, 0, unique)


def split_names(data, count):
    """The first ``count`` NUL-terminated names in ``data`` (as bytes)."""
    return bytes(data).split(b"\0", count)[:count]

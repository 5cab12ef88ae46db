"""Pure logic of the kernel-protocol backend, without a mount: the byte
layouts of kernel_protocol (property tests) and how KernelFileSystem pages a
listing through replies of any size and counts the kernel's lookups."""

import stat
import struct

from hypothesis import given
from hypothesis import strategies as st

from kachery_fs import kernel_protocol as fk
from kachery_fs.kernel_adapter import KernelFileSystem
from kachery_fs.resolver import DIR_MODE, FILE_MODE, Entry, path_inode

names = st.binary(min_size=1, max_size=255).filter(lambda name: b"/" not in name and b"\0" not in name)


@given(st.lists(st.tuples(st.integers(1, 2**63 - 1), names, st.booleans()), max_size=30))
def test_dirents_round_trip_and_stay_8_byte_aligned(items):
    packed = b""
    for index, (ino, name, is_dir) in enumerate(items):
        record = fk.pack_dirent(ino, index + 1, name, DIR_MODE if is_dir else FILE_MODE)
        assert len(record) % 8 == 0
        packed += record
    assert fk.unpack_dirents(packed) == [
        (ino, index + 1, name, (stat.S_IFDIR if is_dir else stat.S_IFREG) >> 12)
        for index, (ino, name, is_dir) in enumerate(items)]


@given(st.integers(0, 2**63), st.integers(0, 2**62), st.integers(0, 2**62))
def test_attr_carries_size_blocks_and_time(ino, size, mtime_ns):
    fields = fk.ATTR.unpack(fk.pack_attr(ino, size, FILE_MODE, 1, 10, 20, mtime_ns, 4096))
    assert fields[:3] == (ino, size, (size + 511) // 512)
    assert fields[4] == mtime_ns // 10**9 and fields[7] == mtime_ns % 10**9
    assert fields[9:13] == (FILE_MODE, 1, 10, 20)
    assert fk.ENTRY_AND_ATTR.size == 128 and fk.INIT_OUT.size == 64 and fk.STATFS_OUT.size == 80


class FakeKachery:
    class stats:
        @staticmethod
        def add(name, amount=1):
            pass


class FlatResolver:
    """One directory /d with ``count`` files, as the resolver would describe it."""

    kachery = FakeKachery()

    def __init__(self, count):
        self.files = [f"file{i:04d}-{'x' * (i % 37)}" for i in range(count)]

    def lookup(self, path):
        if path in ("/", "/d"):
            return Entry(True, 0, path_inode(path), 0, 2)
        raise FileNotFoundError(path)

    def children(self, path, entry):
        return [(name, Entry(False, index, path_inode(f"/d/{name}"), 0, 1))
                for index, name in enumerate(self.files)]


def _page_through(filesystem, nodeid, size, plus, pid=7):
    """Every entry of a listing, asking from each reply's last offset on, as
    the kernel does with READDIRPLUS_AUTO: attributes asked with the first
    part (``plus``), and later only once the program has looked entries up."""
    seen, offset = [], 0
    while True:
        body = fk.READ_IN.pack(0, offset, size, 0) + bytes(16)
        advised = filesystem._file_lookups.get(pid, 0) > 0
        with_attrs = plus and (offset == 0 or advised)
        handler = filesystem._readdirplus if with_attrs else filesystem._readdir
        data = b"".join(handler(nodeid, body, pid))
        if not data:
            return seen
        position = 0
        while position < len(data):
            if with_attrs:
                position += fk.ENTRY_AND_ATTR.size
            ino, next_offset, length, _ = fk.DIRENT.unpack_from(data, position)
            start = position + fk.DIRENT.size
            seen.append((ino, data[start:start + length].decode()))
            position = start + length + (-(fk.DIRENT.size + length) % 8)
            offset = next_offset


@given(st.integers(0, 300), st.integers(320, 5000), st.booleans(), st.booleans())
def test_a_listing_pages_through_replies_of_any_size_exactly_once(count, size, plus, statter):
    resolver = FlatResolver(count)
    filesystem = KernelFileSystem(resolver, channel=None)
    folder = filesystem._remember(filesystem._nodes[fk.ROOT_ID], "d", resolver.lookup("/d"))
    if statter:
        filesystem._file_lookups[7] = 10**6
    seen = _page_through(filesystem, folder, size, plus)
    assert [name for _, name in seen] == [".", ".."] + resolver.files
    assert all(ino == path_inode(f"/d/{name}") for ino, name in seen[2:])
    # Every entry sent with attributes is one lookup the kernel now holds.
    held = {nodeid: node.lookups for nodeid, node in filesystem._nodes.items()}
    files_with_attrs = sum(1 for _, name in seen[2:] if path_inode(f"/d/{name}") in held)
    if not plus:
        assert files_with_attrs == 0
    elif statter:
        assert files_with_attrs == count
    else:  # a program not seen statting files gets attributes with the first part only
        assert files_with_attrs <= 32
    for nodeid in list(held):
        filesystem._forget(nodeid, held[nodeid])
    assert set(filesystem._nodes) == {fk.ROOT_ID}


def test_forget_in_batches_drops_nodes_only_when_their_count_reaches_zero():
    resolver = FlatResolver(3)
    filesystem = KernelFileSystem(resolver, channel=None)
    root = filesystem._nodes[fk.ROOT_ID]
    folder = filesystem._remember(root, "d", resolver.lookup("/d"))
    filesystem._remember(root, "d", resolver.lookup("/d"))
    assert filesystem._nodes[folder].path == "/d"
    batch = fk.BATCH_FORGET_IN.pack(1, 0) + struct.pack("<QQ", folder, 1)
    filesystem._batch_forget(batch)
    assert folder in filesystem._nodes
    filesystem._batch_forget(batch)
    assert folder not in filesystem._nodes
    filesystem._forget(fk.ROOT_ID, 100)  # the root is never forgotten
    assert fk.ROOT_ID in filesystem._nodes

"""The connection to the kernel: mounting, /dev/fuse I/O, backing files, notifications.

:func:`connect` mounts a FUSE file system at a mount point without libfuse and
returns a :class:`Channel` on its ``/dev/fuse`` descriptor:

- through Debian's ``fusermount3`` (setuid root, so any user can mount): the
  descriptor arrives over a socket pair (``_FUSE_COMMFD``, SCM_RIGHTS), and
  with ``auto_unmount`` the helper stays behind and removes the mount the
  moment this process dies, even by kill -9;
- by ``mount(2)`` directly when ``fusermount3`` is missing and we are root
  (then a killed daemon leaves a stale mount, recovered at the next mount).

The channel reads one request per ``readv`` and writes one reply per
``writev`` (the kernel needs each whole in one call); several threads may do
both at once. A reply to a request the kernel has given up on (interrupted,
or the connection ended) fails with ENOENT/ENODEV and is dropped here.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import tempfile

from . import kernel_protocol as fk
from .mount import MountError, unmount

log = logging.getLogger("kachery.mount")

#: Requests are small (no writes: the mount is read-only); this holds the
#: largest the kernel may still send (a SETXATTR with a 64 KiB value, refused).
REQUEST_BUFFER = 128 * 1024 + 4096
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 1, 2, 4


class Channel:
    """An open /dev/fuse connection, mounted at ``mountpoint``."""

    def __init__(self, fd, mountpoint, helper=None, helper_socket=None):
        self.fd = fd
        self.mountpoint = mountpoint
        self._helper = helper  # fusermount3 waiting to auto-unmount, if any
        self._helper_socket = helper_socket

    def receive(self, buffer):
        """Read one request into ``buffer``; its length, or 0 once the file system is unmounted."""
        while True:
            try:
                return os.readv(self.fd, [buffer])
            except OSError as error:
                if error.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: a request interrupted before we read it
                if error.errno in (errno.ENODEV, errno.EBADF):
                    return 0
                raise

    def send(self, parts):
        """Write one reply (a list of buffers, header first). False if the kernel dropped it."""
        try:
            os.writev(self.fd, parts)
            return True
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                return False  # interrupted and already answered, or unmounted
            raise

    def invalidate(self, nodeid):
        """Drop every cached page of ``nodeid`` (FUSE_NOTIFY_INVAL_INODE).

        Never call it from the request that is reading that inode: the
        kernel may wait for that request while holding the pages' locks.
        """
        body = fk.INVAL_INODE_OUT.pack(nodeid, 0, 0)
        header = fk.OUT_HEADER.pack(fk.OUT_HEADER.size + len(body), fk.NOTIFY_INVAL_INODE, 0)
        try:
            os.writev(self.fd, [header, body])
        except OSError as error:  # ENOENT: the kernel no longer knows the inode
            log.debug("cannot invalidate inode %d: %s", nodeid, error)

    def open_backing(self, fd):
        """Register ``fd`` as a passthrough backing file; its backing id. Raises OSError (EPERM
        without CAP_SYS_ADMIN, ELOOP when the file system is stacked too deep, ...)."""
        request = bytearray(fk.BACKING_MAP.pack(fd, 0, 0))
        return fcntl.ioctl(self.fd, fk.DEV_IOC_BACKING_OPEN, request, True)

    def close_backing(self, backing_id):
        request = bytearray(backing_id.to_bytes(4, "little", signed=True))
        try:
            fcntl.ioctl(self.fd, fk.DEV_IOC_BACKING_CLOSE, request, True)
        except OSError as error:
            log.debug("cannot close backing id %d: %s", backing_id, error)

    def unmount(self):
        """Detach the mount (lazily: files still open keep it alive until closed)."""
        try:
            unmount(self.mountpoint, lazy=True)
        except MountError as error:
            log.debug("%s", error)

    def close(self, descriptor=True):
        """Close the connection; the auto_unmount helper then exits.

        ``descriptor=False`` leaves /dev/fuse open for the process exit to
        close (threads may still be blocked reading it)."""
        if descriptor and self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._helper_socket is not None:
            self._helper_socket.close()
            self._helper_socket = None
        if self._helper is not None:
            try:
                self._helper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._helper.kill()
            self._helper = None


def mount_options(allow_other=False):
    """The mount options, as fusermount3 and mount(2) take them."""
    options = ["ro", "nosuid", "nodev", "default_permissions", "fsname=kachery", "subtype=kachery"]
    if allow_other:
        options.append("allow_other")
    return options


def connect(mountpoint, allow_other=False):
    """Mount at ``mountpoint``; the Channel. Raises MountError with the reason."""
    if shutil.which("fusermount3"):
        return _mount_with_fusermount(mountpoint, mount_options(allow_other) + ["auto_unmount"])
    if os.geteuid() == 0:
        return _mount_directly(mountpoint, mount_options(allow_other))
    raise MountError(errno.ENOSYS, "cannot mount: fusermount3 not found (apt-get install fuse3)")


def _mount_with_fusermount(mountpoint, options):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with tempfile.TemporaryFile() as errors:
        helper = subprocess.Popen(
            ["fusermount3", "-o", ",".join(options), "--", mountpoint],
            env=dict(os.environ, _FUSE_COMMFD=str(theirs.fileno())),
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,  # the terminal's Ctrl-C is for us, not the helper
        )
        theirs.close()
        try:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        except OSError:
            fds = []
        if not fds:
            ours.close()
            helper.wait()
            errors.seek(0)
            detail = errors.read().decode("utf-8", "replace").strip().splitlines()
            reason = detail[-1] if detail else f"fusermount3 exit status {helper.returncode}"
            raise MountError(errno.EIO, f"could not mount {mountpoint} ({reason})")
    os.set_inheritable(fds[0], False)
    return Channel(fds[0], mountpoint, helper, ours)


def _mount_directly(mountpoint, options):
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    data = ",".join([f"fd={fd}", "rootmode=40000", "user_id=0", "group_id=0"]
                    + [option for option in options if option not in ("ro", "nosuid", "nodev")
                       and not option.startswith(("fsname=", "subtype="))])
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV
    if libc.mount(b"kachery", os.fsencode(mountpoint), b"fuse.kachery", flags, data.encode()) != 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise MountError(code, f"could not mount {mountpoint} ({os.strerror(code)})")
    return Channel(fd, mountpoint)

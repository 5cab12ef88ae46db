"""fsspec protocols ``sha1``, ``md5`` and ``sha1dir``: hash URLs in every Python tool.

Registered through the ``fsspec.specs`` entry point, so with kachery
installed, and no mount::

    import fsspec, pandas
    fsspec.open("sha1://ad7f…/x.bin").open().read()
    pandas.read_csv("sha1dir://615a….tables/t.csv")

Under it is the same core as the commands and the mount (local store first,
then the remotes, the download cache and its quota, verification); see
:mod:`kachery_fsspec.filesystem`. Nothing here imports the FUSE layer.
"""

from .filesystem import KacheryFileSystem, Md5FileSystem, Sha1DirFileSystem, Sha1FileSystem

__all__ = ["KacheryFileSystem", "Md5FileSystem", "Sha1DirFileSystem", "Sha1FileSystem"]

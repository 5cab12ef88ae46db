"""kachery_core: content-addressed storage of files and directories by hash URL.

The kachery 0.6.x API names (``store_file``, ``load_file``, ...) are available
here, so an old script works after changing its import line.
"""

__version__ = "1.0.0"

from .api import (  # noqa: E402  (after __version__ on purpose)
    get_file_info,
    load_bytes,
    load_file,
    load_npy,
    load_object,
    load_text,
    read_dir,
    store_dir,
    store_file,
    store_npy,
    store_object,
    store_text,
)
from .errors import (  # noqa: E402
    HashMismatch,
    InvalidManifest,
    InvalidURL,
    KacheryError,
    ObjectNotFound,
)

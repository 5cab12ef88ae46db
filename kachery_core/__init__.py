"""kachery_core: content-addressed storage of files and directories by hash URL.

The kachery 0.6.x API names (``store_file``, ``load_file``, ...) are available
here, so an old script works after changing its import line. They are loaded
on first use (PEP 562), so that a command importing one submodule does not pay
for the whole library at start-up.
"""

import importlib

__version__ = "1.0.0"

_API = (
    "get_file_hash", "get_file_info", "load_bytes", "load_file", "load_npy", "load_object", "load_text",
    "read_dir", "store_dir", "store_file", "store_npy", "store_object", "store_text",
)
_CONFIG = ("config", "get_config", "set_config")
_ERRORS = ("HashMismatch", "InvalidManifest", "InvalidURL", "KacheryError", "ObjectNotFound")

__all__ = [*_API, *_CONFIG, *_ERRORS]


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _CONFIG:
        return getattr(importlib.import_module(".compat06", __name__), name)
    if name in _ERRORS:
        return getattr(importlib.import_module(".errors", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

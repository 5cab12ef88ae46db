"""Configuration shared by the commands, the mount, the server and the API.

Sources, later ones winning: built-in defaults, the config file
(``$KACHERY_CONFIG`` or ``~/.config/kachery/config.toml``), environment
variables (``KACHERY_STORAGE_DIR``, ``KACHERY_REMOTE``, ``KACHERY_TOKEN``,
``KACHERY_CACHE_MAX``), then
explicit per-call arguments.

Example config file::

    storage_dir = "/data/kachery-storage"
    cache_max = "20G"
    remote_timeout = 10
    remote_speed_limit = "16K"  # bytes/s: a slower transfer over ...
    remote_speed_time = 10      # ... this many seconds fails (curl's --speed-limit/-time)
    verify_reads = false        # true: a mount re-hashes each stored object at its first open

    [[remotes]]
    url = "https://kachery.example.org"
    token = "..."            # used for uploads (and reads of a private server)
"""

import os
from dataclasses import dataclass, field, replace

from .errors import ConfigError
from .pace import DEFAULT_SPEED_LIMIT, DEFAULT_SPEED_TIME


def default_storage_dir():
    """kachery 0.6.x's default, so an existing store is found without settings."""
    return os.path.join(os.path.expanduser("~"), "kachery-storage")


def config_file_path(variable="KACHERY_CONFIG", name="config.toml"):
    """``$variable`` if set, else ``<XDG config dir>/kachery/<name>``."""
    explicit = os.environ.get(variable)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "kachery", name)


@dataclass(frozen=True)
class Remote:
    url: str
    token: str | None = None


@dataclass(frozen=True)
class Config:
    storage_dir: str = field(default_factory=default_storage_dir)
    remotes: tuple = ()
    cache_max: int | None = None  # bytes; None means no quota
    remote_timeout: float = 10.0
    #: A transfer slower than this many bytes/s over remote_speed_time seconds
    #: fails (then the next remote); 0 disables the check. See pace.py.
    remote_speed_limit: int = DEFAULT_SPEED_LIMIT
    remote_speed_time: float = DEFAULT_SPEED_TIME
    #: Re-hash every object of the user's store at its first open in a mount
    #: (download-cache entries are always checked before first use).
    verify_reads: bool = False
    #: KACHERY_TOKEN: the token of every remote, also of those given later
    #: with ``with_remote_urls`` (``--remote``), over any in the config file.
    token: str | None = None

    def with_overrides(self, **overrides):
        """A copy with every override that is not None applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def with_remote_urls(self, urls):
        """A copy reading from ``urls`` instead, keeping tokens configured for
        them (KACHERY_TOKEN, when set, is the token of every one)."""
        tokens = {remote.url: remote.token for remote in self.remotes}
        stripped = [_strip_slash(url) for url in urls]
        return replace(self, remotes=tuple(Remote(url, self.token or tokens.get(url))
                                           for url in stripped))


def load_config(path=None, environ=None):
    """Read defaults, the config file and the environment into a Config."""
    environ = os.environ if environ is None else environ
    settings = _read_file(path or config_file_path())
    storage_dir = environ.get("KACHERY_STORAGE_DIR") or settings.get("storage_dir")
    if storage_dir is not None and not isinstance(storage_dir, str):
        raise ConfigError(f"config file: storage_dir must be a string, got {storage_dir!r}")
    token = environ.get("KACHERY_TOKEN")
    remotes = _remotes_from_file(settings)
    if environ.get("KACHERY_REMOTE"):
        by_url = {remote.url: remote for remote in remotes}
        urls = environ["KACHERY_REMOTE"].replace(",", " ").split()
        remotes = tuple(by_url.get(_strip_slash(url), Remote(_strip_slash(url))) for url in urls)
    if token:
        remotes = tuple(replace(remote, token=token) for remote in remotes)
    return Config(
        storage_dir=os.path.expanduser(storage_dir) if storage_dir else default_storage_dir(),
        remotes=remotes,
        cache_max=_optional_size(environ.get("KACHERY_CACHE_MAX") or settings.get("cache_max")),
        remote_timeout=_number(settings, "remote_timeout", 10.0),
        remote_speed_limit=parse_size(settings.get("remote_speed_limit", DEFAULT_SPEED_LIMIT)),
        remote_speed_time=_number(settings, "remote_speed_time", DEFAULT_SPEED_TIME),
        verify_reads=_flag(environ.get("KACHERY_VERIFY_READS", settings.get("verify_reads", False))),
        token=token or None,
    )


def _number(settings, key, default):
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"config file: {key} must be a number of seconds, got {value!r}")
    return float(value)


def _flag(value):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"verify_reads must be true or false, got {value!r}")


def _optional_size(value):
    return None if value in (None, "") else parse_size(value)


def _read_file(path):
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path}: {error}") from None


def _remotes_from_file(settings):
    remotes = []
    for item in settings.get("remotes", []):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ConfigError("config file: each [[remotes]] entry needs a url")
        remotes.append(Remote(_strip_slash(item["url"]), item.get("token")))
    return tuple(remotes)


def _strip_slash(url):
    return url.rstrip("/")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def format_size(size):
    """1536 -> '1.5 KiB' (under 1 KiB: the exact count), the inverse of parse_size."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_size(text):
    """'2G', '500M', '1.5T', '4096' → bytes (binary units)."""
    if isinstance(text, int):
        return text
    value = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise ConfigError(f"bad size {text!r} (examples: 500M, 2G)") from None
    if number < 0:
        raise ConfigError(f"bad size {text!r}: negative")
    return int(number * _UNITS[unit])

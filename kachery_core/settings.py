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

import math
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


#: The keys a config file may have; any other is reported (a typo would
#: otherwise be silently ignored).
KNOWN_KEYS = {"storage_dir", "remotes", "cache_max", "remote_timeout", "remote_speed_limit",
              "remote_speed_time", "verify_reads"}
_warned = set()


def load_config(path=None, environ=None):
    """Read defaults, the config file and the environment into a Config."""
    environ = os.environ if environ is None else environ
    path = path or config_file_path()
    settings = _read_file(path)
    where = f"config file {path}"
    _warn_unknown_keys(settings, where)
    in_file = settings.get("storage_dir")
    if in_file is not None and not isinstance(in_file, str):
        raise ConfigError(f"{where}: storage_dir must be a string, got {in_file!r}")
    storage_dir = environ.get("KACHERY_STORAGE_DIR") or in_file
    token = _token(environ.get("KACHERY_TOKEN"))
    remotes = _remotes_from_file(settings, where)
    if environ.get("KACHERY_REMOTE"):
        by_url = {remote.url: remote for remote in remotes}
        urls = environ["KACHERY_REMOTE"].replace(",", " ").split()
        remotes = tuple(by_url.get(_strip_slash(url), Remote(_strip_slash(url))) for url in urls)
    if token:
        remotes = tuple(replace(remote, token=token) for remote in remotes)
    return Config(
        storage_dir=os.path.expanduser(storage_dir) if storage_dir else default_storage_dir(),
        remotes=remotes,
        cache_max=(_in("environment", "KACHERY_CACHE_MAX", _optional_size, environ["KACHERY_CACHE_MAX"])
                   if environ.get("KACHERY_CACHE_MAX")
                   else _in(where, "cache_max", _optional_size, settings.get("cache_max"))),
        remote_timeout=_number(settings, "remote_timeout", 10.0, where),
        remote_speed_limit=_in(where, "remote_speed_limit", parse_size,
                               settings.get("remote_speed_limit", DEFAULT_SPEED_LIMIT)),
        remote_speed_time=_number(settings, "remote_speed_time", DEFAULT_SPEED_TIME, where),
        verify_reads=_in(where, "verify_reads", _flag,
                         environ.get("KACHERY_VERIFY_READS", settings.get("verify_reads", False))),
        token=token or None,
    )


def _warn_unknown_keys(settings, where):
    import logging

    for key in sorted(set(settings) - KNOWN_KEYS):
        if (where, key) not in _warned:  # once per process, though read many times
            _warned.add((where, key))
            logging.getLogger("kachery").warning("%s: unknown key %r ignored (known: %s)",
                                                 where, key, ", ".join(sorted(KNOWN_KEYS)))


def _token(value, name="KACHERY_TOKEN"):
    """A token as it may go in an Authorization header (printable ASCII)."""
    if value and not (isinstance(value, str) and value.isascii() and value.isprintable()):
        raise ConfigError(f"{name} holds characters that cannot go in an HTTP header "
                          "(a token is printable ASCII)")
    return value


def _in(where, key, convert, value):
    """``convert(value)``, its error naming the key and the file."""
    try:
        return convert(value)
    except ConfigError as error:
        raise ConfigError(f"{where}: {key}: {error}") from None


def _number(settings, key, default, where="config file"):
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be a number of seconds, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: {key} must not be negative, got {value!r}")
    if not math.isfinite(value):  # TOML has nan and inf; a timer cannot use them
        raise ConfigError(f"{where}: {key} must be a finite number of seconds, got {value!r}")
    return float(value)


def _flag(value):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"must be true or false, got {value!r}")


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


def _remotes_from_file(settings, where="config file"):
    remotes = []
    items = settings.get("remotes", [])
    if not isinstance(items, list):
        raise ConfigError(f"{where}: remotes must be a list of [[remotes]] tables")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ConfigError(f"{where}: each [[remotes]] entry needs a url")
        try:
            remotes.append(Remote(_strip_slash(item["url"]), _token(item.get("token"), "token")))
        except ConfigError as error:
            raise ConfigError(f"{where}: [[remotes]]: {error}") from None
    return tuple(remotes)


def _strip_slash(url):
    return valid_remote_url(url).rstrip("/")


REMOTE_SCHEMES = ("http", "https", "s3")


def valid_remote_url(url):
    """``url`` if it can name a remote (http(s)://HOST[:PORT][/PATH] or
    s3://BUCKET[/PREFIX]), else a ConfigError naming it — checked before any
    request, so a typo is one line and not a library's warning or traceback."""
    from urllib.parse import urlsplit

    def invalid(problem):
        return ConfigError(f"invalid remote URL {url!r}: {problem}")

    if not isinstance(url, str) or not url.strip() or any(c.isspace() for c in url):
        raise invalid("expected http://HOST, https://HOST or s3://BUCKET")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as error:
        raise invalid(str(error)) from None
    if parts.scheme not in REMOTE_SCHEMES:
        shown = f"scheme {parts.scheme}://" if parts.scheme else "no scheme"
        raise invalid(f"{shown}; expected http://HOST, https://HOST or s3://BUCKET")
    if not parts.netloc:
        raise invalid("no host" if parts.scheme != "s3" else "no bucket")
    return url


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

"""Server configuration file and bearer-token access control.

The file is TOML (default ``$KACHERY_SERVER_CONFIG`` or
``~/.config/kachery/server.toml``)::

    storage = "/data/kachery-storage"   # or "s3://BUCKET/PREFIX" (storage_dir: same)
    s3_proxy = false         # true: bucket reads stream through the server
    host = "0.0.0.0"
    port = 8080
    private = false          # true: reads need a token with read permission
    max_upload = "100G"
    tls_cert = "/etc/kachery/cert.pem"
    tls_key = "/etc/kachery/key.pem"

    [[tokens]]               # written by `kachery-server token add NAME [--write]`
    name = "alice"
    sha256 = "<hex sha256 of the token>"
    read = true
    write = true

Tokens are random 256-bit strings shown once; the file keeps only their
SHA-256. A fast hash is enough here (unlike passwords): the tokens are
high-entropy, so the digest cannot be brute-forced back to a token.
"""

import hashlib
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass, field

from kachery_core.settings import config_file_path, parse_size
from kachery_core.errors import ConfigError

log = logging.getLogger("kachery.server")

DEFAULT_MAX_UPLOAD = "64G"
DEFAULT_PORT = 8080


def default_config_path():
    """``$KACHERY_SERVER_CONFIG``, else ``~/.config/kachery/server.toml``."""
    return config_file_path("KACHERY_SERVER_CONFIG", "server.toml")


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str
    read: bool = True
    write: bool = False


@dataclass(frozen=True)
class ServerSettings:
    """Everything the file can set; command-line options override it."""

    storage_dir: str | None = None  # a directory or s3://BUCKET/PREFIX
    s3_proxy: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    private: bool = False
    max_upload: int = parse_size(DEFAULT_MAX_UPLOAD)
    tls_cert: str | None = None
    tls_key: str | None = None
    tokens: tuple = field(default_factory=tuple)


def token_digest(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Access:
    """Who may do what: decides a request's fate from its Authorization header.

    With ``config_path``, the tokens follow that file while the server runs:
    its status is looked at no more than once per RELOAD_INTERVAL, and a
    changed file is read again, so `kachery-server token add/remove` takes
    effect without a restart. A file that no longer parses keeps the tokens
    in force and is reported once (log).
    """

    #: Seconds between looks at the config file.
    RELOAD_INTERVAL = 1.0

    def __init__(self, tokens, private=False, config_path=None):
        self.private = private
        self._by_digest = {token.sha256: token for token in tokens}
        self._config_path = config_path
        self._file_state = _file_state(config_path) if config_path else None
        self._next_look = time.monotonic() + self.RELOAD_INTERVAL

    def token_for(self, authorization):
        """The Token of a 'Bearer <token>' header, or None (absent or unknown)."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        self._follow_config()
        try:
            digest = token_digest(value.strip())
        except UnicodeError:  # bytes that are no token of ours (aiohttp keeps them as surrogates)
            return None
        return self._by_digest.get(digest)

    def _follow_config(self):
        if self._config_path is None or time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + self.RELOAD_INTERVAL
        state = _file_state(self._config_path)
        if state == self._file_state:
            return
        self._file_state = state
        try:
            tokens = load_settings(self._config_path).tokens
        except ConfigError as error:
            log.error("%s; the tokens loaded before stay in force", error)
            return
        self._by_digest = {token.sha256: token for token in tokens}
        log.info("tokens reloaded from %s: %d", self._config_path, len(tokens))

    def check(self, authorization, write):
        """None when allowed, else (status, reason): 401 no/bad token, 403 not permitted."""
        if not write and not self.private:
            return None
        token = self.token_for(authorization)
        if token is None:
            reason = "bad token" if authorization else "a token is required"
            return 401, reason
        allowed = token.write if write else token.read
        if not allowed:
            return 403, f"token {token.name!r} may not {'write' if write else 'read'}"
        return None


def _file_state(path):
    """What tells that a file changed: (inode, size, mtime), or None if absent."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


# -------------------------------------------------------------- config file

def load_settings(path):
    """Read the server config file (missing file → defaults); raise ConfigError."""
    data = _read_toml(path)
    try:
        return ServerSettings(
            storage_dir=data.get("storage", data.get("storage_dir")),
            s3_proxy=bool(data.get("s3_proxy", False)),
            host=str(data.get("host", "127.0.0.1")),
            port=_port(data.get("port", DEFAULT_PORT)),
            private=bool(data.get("private", False)),
            max_upload=parse_size(data.get("max_upload", DEFAULT_MAX_UPLOAD)),
            tls_cert=data.get("tls_cert"),
            tls_key=data.get("tls_key"),
            tokens=tuple(_token(item) for item in data.get("tokens", [])),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"server config {path}: {error}") from None


def _port(value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {value!r}")
    return value


def _token(item):
    if not isinstance(item, dict) or not isinstance(item.get("sha256"), str):
        raise ValueError("each [[tokens]] entry needs name and sha256")
    return Token(str(item.get("name", "")), item["sha256"].lower(),
                 bool(item.get("read", True)), bool(item.get("write", False)))


def _read_toml(path):
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"server config {path}: {error}") from None
    return _loads(text, path)


def _loads(text, path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except ValueError as error:
        raise ConfigError(f"server config {path}: {error}") from None


def add_token(path, name, write=False):
    """Create a token NAME, append its hash to the config file; return the token.

    Appending (rather than rewriting) keeps the user's comments and layout.
    The file is created with mode 0600 when missing.
    """
    if not name or any(ch in name for ch in "\n\r\0"):
        raise ConfigError(f"bad token name {name!r}")
    if any(token.name == name for token in load_settings(path).tokens):
        raise ConfigError(f"a token named {name!r} already exists in {path}")
    token = secrets.token_urlsafe(32)
    entry = (f"\n[[tokens]]\nname = {_toml_string(name)}\nsha256 = \"{token_digest(token)}\"\n"
             f"read = true\nwrite = {'true' if write else 'false'}\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(entry)
    return token


def _toml_string(text):
    """``text`` as a TOML basic string: quotes, backslashes and control
    characters escaped, everything else as is (the file is UTF-8). (json.dumps
    is not enough: it writes characters beyond U+FFFF as surrogate pairs, which
    TOML refuses, and leaves DEL unescaped.)"""
    escaped = "".join(
        "\\" + char if char in '"\\' else
        f"\\u{ord(char):04X}" if ord(char) < 0x20 or ord(char) == 0x7F else char
        for char in text)
    return f'"{escaped}"'


def remove_token(path, name):
    """Delete the [[tokens]] entry named NAME from the config file.

    Only that table's lines go; comments and the rest of the layout stay. The
    file is replaced atomically with the same permissions, and a running
    server stops accepting the token within a second (see Access).
    """
    settings = load_settings(path)
    if not any(token.name == name for token in settings.tokens):
        raise ConfigError(f"no token named {name!r} in {path}")
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines(keepends=True)
    kept = _without_token_table(lines, name)
    text = "".join(kept)
    remaining = _parse_tokens(text, path)
    if [t.name for t in remaining] != [t.name for t in settings.tokens if t.name != name]:
        raise ConfigError(f"could not remove token {name!r} from {path} safely: edit it by hand")
    _replace_file(path, text)


def _without_token_table(lines, name):
    """``lines`` minus the [[tokens]] table whose name is ``name``."""
    tables, start = [], None  # (first line, end line) of each table
    for number, line in enumerate(lines):
        if _TABLE_HEADER.match(line):
            if start is not None:
                tables.append((start, number))
            start = number
    if start is not None:
        tables.append((start, len(lines)))
    for first, end in tables:
        block = lines[first:end]
        if block[0].strip() == "[[tokens]]" and _parse_tokens("".join(block), "")[0].name == name:
            return lines[:first] + lines[end:]
    return lines


_TABLE_HEADER = re.compile(r"^\s*\[")


def _parse_tokens(text, path):
    try:
        return tuple(_token(item) for item in _loads(text, path).get("tokens", []))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"server config {path}: {error}") from None


def _replace_file(path, text):
    """Write ``text`` to ``path`` atomically, keeping the file's mode."""
    mode = os.stat(path).st_mode & 0o7777
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".server.toml.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise

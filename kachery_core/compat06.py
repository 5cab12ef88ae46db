"""The configuration calls kachery 0.6 scripts start with, mapped onto ours.

    ka.set_config(fr=..., to=...)      for the rest of the process
    with ka.config(fr=..., to=...):    for a block (restored after it)
    ka.get_config()                    the effective settings, as a dict

What each 0.6 setting becomes (docs: README, "kachery 0.6 scripts"):

    fr=URL | {"url": ..., "password"/"token": ...} | [several]
                        the remotes read from, in order (None or []: local only)
    to=URL | {...}      where store_* upload to; it is also read from first,
                        and the store functions upload by default
    to_remote_only      store_* upload without keeping a local copy (upload_only)
    from_remote_only    accepted, no effect: the local store is always asked
                        first (content-addressed: the same hash is the same bytes)
    url, password, channel, download, upload, upload_only, download_only
                        the older 0.6 form: url (+ password as its token) is
                        the remote; upload / upload_only as above
    algorithm           the default hash of store_file ("sha1" or "md5")
    use_hard_links, verbose, preset
                        accepted, no effect (objects are always copied;
                        use logging for verbosity)

0.6 named its hosted servers by preset names ("default_readonly", ...);
those servers are gone, so such a name is a clear ValueError asking for the
URL of a kachery server instead. Settings apply to the whole process (as in
0.6), below any per-call option (``remotes=``, ``upload=``, ...).
"""

import contextlib
import copy
import threading

from .errors import ConfigError
from .settings import Remote, valid_remote_url

_IGNORED = ("from_remote_only", "use_hard_links", "verbose", "preset", "channel", "download",
            "download_only")
_KNOWN = ("fr", "to", "to_remote_only", "url", "password", "upload", "upload_only", "algorithm",
          *_IGNORED)
_lock = threading.Lock()
_settings = {}


def set_config(**settings):
    """Set 0.6-style settings for the rest of the process (see the module docstring)."""
    unknown = sorted(set(settings) - set(_KNOWN))
    if unknown:
        raise TypeError(f"set_config: unknown setting(s) {', '.join(unknown)}")
    parsed = _parse(settings)
    with _lock:
        _settings.update(parsed)


def get_config():
    """The effective 0.6-style settings: {"fr": [urls], "to": url or None,
    "to_remote_only": bool, "algorithm": str} plus where they come from."""
    from .settings import load_config

    with _lock:
        settings = copy.deepcopy(_settings)
    configured = load_config()
    remotes = settings.get("remotes")
    if remotes is None:
        remotes = list(configured.remotes)
    return {
        "storage_dir": configured.storage_dir,
        "fr": [remote.url for remote in remotes],
        "to": settings["to"].url if settings.get("to") else None,
        "upload": bool(settings.get("upload")),
        "to_remote_only": bool(settings.get("upload_only")),
        "algorithm": settings.get("algorithm", "sha1"),
    }


@contextlib.contextmanager
def config(**settings):
    """``with ka.config(fr=..., to=...):`` the settings hold inside the block only."""
    with _lock:
        saved = copy.deepcopy(_settings)
    try:
        set_config(**settings)
        yield get_config()
    finally:
        with _lock:
            _settings.clear()
            _settings.update(saved)


def defaults():
    """The settings in the form of the API's per-call options: ``remotes``
    (a list of settings.Remote), ``upload``, ``upload_only``, ``algorithm``."""
    with _lock:
        settings = dict(_settings)
    options = {}
    remotes = settings.get("remotes")
    target = settings.get("to")
    if target is not None:
        reads = [remote for remote in (remotes or []) if remote.url != target.url]
        options["remotes"] = [target, *reads]
        options["upload"] = settings.get("upload", True)
    elif remotes is not None:
        options["remotes"] = remotes
    for key in ("upload", "upload_only", "algorithm"):
        if key in settings:
            options[key] = settings[key]
    return options


def _parse(settings):
    parsed = {}
    if "fr" in settings:
        parsed["remotes"] = _remotes(settings["fr"], "fr")
    if settings.get("url"):
        parsed["remotes"] = [Remote(_url(settings["url"], "url"), settings.get("password"))]
    if "to" in settings:
        targets = _remotes(settings["to"], "to")
        if len(targets) > 1:
            raise ValueError("to=: one upload target (a URL or a {'url': ...} dict)")
        parsed["to"] = targets[0] if targets else None
        parsed["upload"] = bool(targets)
    if "to_remote_only" in settings or "upload_only" in settings:  # False turns it off again
        parsed["upload_only"] = bool(settings.get("to_remote_only") or settings.get("upload_only"))
    if "upload" in settings:
        parsed["upload"] = bool(settings["upload"])
    if "algorithm" in settings:
        if settings["algorithm"] not in ("sha1", "md5"):
            raise ValueError(f"algorithm {settings['algorithm']!r}: expected 'sha1' or 'md5'")
        parsed["algorithm"] = settings["algorithm"]
    return parsed


def _remotes(value, what):
    """fr= / to= in any 0.6 form -> [settings.Remote]."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, (list, tuple)):
        return [remote for item in value for remote in _remotes(item, what)]
    if isinstance(value, dict):
        if "url" not in value:
            raise ValueError(f"{what}=: a dict needs a 'url' (got keys {sorted(value)})")
        return [Remote(_url(value["url"], what), value.get("token") or value.get("password"))]
    if isinstance(value, str):
        return [Remote(_url(value, what))]
    raise ValueError(f"{what}=: expected a URL, a {{'url': ...}} dict or a list, got {value!r}")


def _url(text, what):
    """A remote URL checked at the call (ValueError), not at the first request."""
    if "://" not in str(text):
        raise ValueError(f"{what}={text!r}: kachery 0.6 preset names named servers that no longer "
                         f"exist; give the URL of a kachery server (e.g. 'http://host:8080')")
    try:
        return valid_remote_url(str(text)).rstrip("/")
    except ConfigError as error:
        raise ConfigError(f"{what}=: {error}") from None

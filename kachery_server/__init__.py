"""kachery-server: serves a storage directory over HTTP (SPEC §5).

Modules, one job each:

- ``ranges``   — parsing of the ``Range`` request header (pure).
- ``access``   — the server config file, hashed bearer tokens, permissions.
- ``receive``  — one PUT body streamed to a temp file while hashing.
- ``handlers`` — the aiohttp request handlers (GET/HEAD/PUT objects, api/has).
- ``app``      — building the application and running it until SIGTERM.
- ``cli``      — the ``kachery-server`` command.

Only this package imports aiohttp; ``kachery_core`` never does.
"""

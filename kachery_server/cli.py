"""The ``kachery-server`` command.

    kachery-server [--storage DIR|s3://BUCKET/PREFIX] [--s3-proxy] [--host H] [--port P]
                   [--config FILE] [--tls-cert F --tls-key F] [--max-upload SIZE] [--private]
                   [--no-gateway]
    kachery-server verify [--quarantine] [--storage ...]
    kachery-server token add NAME [--write] [--config FILE]
    kachery-server token remove NAME [--config FILE]
    kachery-server token list [--config FILE]
"""

import logging
import os

import click

from kachery_cli.conventions import QUIET, configure_logging, conventional
from kachery_cli.exit_codes import run_click_command, run_reporting_errors
from kachery_core.settings import load_config, parse_size

from . import access

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False),
    help="Server config file (default $KACHERY_SERVER_CONFIG or ~/.config/kachery/server.toml).")


@conventional
@click.group(invoke_without_command=True)
@click.option("--storage", "--storage-dir", "storage",
              help="Storage directory or s3://BUCKET/PREFIX to serve (AWS_* settings apply).")
@click.option("--s3-proxy", is_flag=True, default=None,
              help="Stream bucket reads through the server instead of redirecting to the bucket.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8080; 0 picks a free one).")
@_config_option
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate (enables HTTPS).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key.")
@click.option("--max-upload", help="Largest accepted upload, e.g. 100G.")
@click.option("--private", is_flag=True, default=None, help="Reads need a token too.")
@click.option("--no-gateway", is_flag=True,
              help="Serve only the object protocol (no /sha1dir/ pages or /sha1/<h>/<name>).")
@click.option("--shutdown-grace", type=float, default=None, metavar="SECONDS",
              help="After SIGTERM, how long in-flight requests may finish (default 30).")
@click.pass_context
def server_main(ctx, **options):
    """Serve a kachery storage directory over HTTP."""
    if ctx.invoked_subcommand is None:
        run_reporting_errors(_serve, **options)


def main():
    """Entry point: usage errors in the one-line style of every kachery command;
    -q (errors only: no banner, no access log), -v and -vv as on every command."""
    configure_logging()
    run_click_command(server_main, "kachery-server")


def _storage(location, settings, proxy=None):
    from .storage import open_storage

    location = location or settings.storage_dir or load_config().storage_dir
    if not str(location).startswith("s3://") and not os.path.isdir(location):
        logging.getLogger("kachery").warning(
            "storage directory %s does not exist yet (created by the first upload)", location)
    return open_storage(location, proxy=settings.s3_proxy if proxy is None else proxy)


def _serve(storage, s3_proxy, host, port, config_path, tls_cert, tls_key, max_upload, private,
           no_gateway, shutdown_grace):
    from .app import configure_logging as configure_server_logging
    from .app import make_app, run, tls_context

    config_path = config_path or access.default_config_path()
    settings = access.load_settings(config_path)
    storage = _storage(storage, settings, s3_proxy)
    limit = parse_size(max_upload) if max_upload else settings.max_upload
    private = settings.private if private is None else private
    rules = access.Access(settings.tokens, private=private, config_path=config_path)
    context = tls_context(tls_cert or settings.tls_cert, tls_key or settings.tls_key)
    configure_server_logging(quiet=QUIET["on"])
    reads = "reads need a token" if private else "public reads"
    banner = f"serving {storage.describe()} ({reads}, {len(settings.tokens)} tokens)"
    run(make_app(storage, rules, limit, gateway=not no_gateway), host or settings.host,
        settings.port if port is None else port, context, banner, shutdown_grace)


@server_main.command("verify")
@click.option("--storage", "--storage-dir", "storage", help="Storage directory or s3://BUCKET/PREFIX.")
@click.option("--quarantine", is_flag=True,
              help="Move corrupt objects to quarantine/ (a later upload puts the right bytes back).")
@_config_option
def verify(storage, quarantine, config_path):
    """Re-hash every object the server stores; report corrupt ones (exit 3 if any)."""
    import sys

    from kachery_cli.exit_codes import ExitStatus

    from .storage import verify_storage

    def body():
        settings = access.load_settings(config_path or access.default_config_path())
        target = _storage(storage, settings)

        def report(algorithm, digest, got, where):
            moved = f" -> {where}" if where else ""
            click.echo(f"CORRUPT {algorithm}://{digest} (content hashes to {got}){moved}")

        checked, total, corrupt = verify_storage(target, quarantine, report)
        click.echo(f"{target.describe()}: checked {checked} object(s), {total} bytes, "
                   f"{corrupt} corrupt" + (f", {corrupt} quarantined" if quarantine else ""), err=True)
        if corrupt:
            sys.exit(ExitStatus.CORRUPT)

    run_reporting_errors(body)


@server_main.group()
def token():
    """Manage the access tokens of the server config file."""


@token.command("add")
@click.argument("name")
@click.option("--write", is_flag=True, help="Allow uploads with this token (reads always).")
@_config_option
def token_add(name, write, config_path):
    """Create a token; print it once on stdout (only its hash is kept)."""
    path = config_path or access.default_config_path()
    run_reporting_errors(lambda: click.echo(access.add_token(path, name, write)))


@token.command("remove")
@click.argument("name")
@_config_option
def token_remove(name, config_path):
    """Delete a token; a running server refuses it within a second."""
    path = config_path or access.default_config_path()
    run_reporting_errors(lambda: access.remove_token(path, name))


@token.command("list")
@_config_option
def token_list(config_path):
    """Names and permissions of the configured tokens (never the tokens)."""

    def body():
        settings = access.load_settings(config_path or access.default_config_path())
        for item in settings.tokens:
            rights = "+".join(r for r, ok in (("read", item.read), ("write", item.write)) if ok)
            click.echo(f"{item.name}\t{rights or 'none'}")

    run_reporting_errors(body)

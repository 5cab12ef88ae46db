"""The ``kachery-server`` command.

    kachery-server [--storage DIR] [--host H] [--port P] [--config FILE]
                   [--tls-cert F --tls-key F] [--max-upload SIZE] [--private]
    kachery-server token add NAME [--write] [--config FILE]
    kachery-server token remove NAME [--config FILE]
    kachery-server token list [--config FILE]
"""

import click

from kachery_cli.exit_codes import run_reporting_errors
from kachery_core.config import load_config, parse_size

from . import access

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False),
    help="Server config file (default $KACHERY_SERVER_CONFIG or ~/.config/kachery/server.toml).")


@click.group(invoke_without_command=True)
@click.option("--storage", type=click.Path(file_okay=False), help="Storage directory to serve.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 8080; 0 picks a free one).")
@_config_option
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate (enables HTTPS).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key.")
@click.option("--max-upload", help="Largest accepted upload, e.g. 100G.")
@click.option("--private", is_flag=True, default=None, help="Reads need a token too.")
@click.option("--shutdown-grace", type=float, default=None, metavar="SECONDS",
              help="After SIGTERM, how long in-flight requests may finish (default 30).")
@click.pass_context
def server_main(ctx, **options):
    """Serve a kachery storage directory over HTTP."""
    if ctx.invoked_subcommand is None:
        run_reporting_errors(_serve, **options)


def _serve(storage, host, port, config_path, tls_cert, tls_key, max_upload, private, shutdown_grace):
    from kachery_core.store import LocalStore

    from .app import configure_logging, make_app, run, tls_context

    config_path = config_path or access.default_config_path()
    settings = access.load_settings(config_path)
    root = storage or settings.storage_dir or load_config().storage_dir
    store = LocalStore(root)
    store.remove_stale_temps()
    limit = parse_size(max_upload) if max_upload else settings.max_upload
    private = settings.private if private is None else private
    rules = access.Access(settings.tokens, private=private, config_path=config_path)
    context = tls_context(tls_cert or settings.tls_cert, tls_key or settings.tls_key)
    configure_logging()
    reads = "reads need a token" if private else "public reads"
    banner = f"serving {store.root} ({reads}, {len(settings.tokens)} tokens)"
    run(make_app(store, rules, limit), host or settings.host,
        settings.port if port is None else port, context, banner, shutdown_grace)


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

"""The options users of rclone, restic and git expect on every command:
``--version``, ``-h``/``--help``, ``-q``/``--quiet`` and ``-v``/``--verbose``.

Apply :func:`conventional` on top of a click command (above ``@click.command``)::

    @conventional
    @click.command("store")
    ...

``-q`` shows errors only (no warnings, no progress); ``-v`` adds what the
command does (INFO), ``-vv`` everything (DEBUG). ``kachery-ls`` keeps ``-h``
for human-readable sizes, as ``ls`` does (its help is ``--help``).
"""

import logging

import click

#: Set by -q: progress lines are not drawn (progress.Progress.maybe).
QUIET = {"on": False}


def configure_logging():
    """Log lines on stderr, warnings and up; -q and -v then set the level.
    Every entry point calls this before click parses the options."""
    logging.basicConfig(format="kachery: %(levelname)s: %(message)s", level=logging.WARNING)


def conventional(command, help_names=("-h", "--help")):
    command.context_settings.setdefault("help_option_names", list(help_names))
    options = [
        click.version_option(package_name="kachery", message="%(prog)s %(version)s"),
        click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                     callback=_quiet, help="Errors only: no warnings, no progress."),
        click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                     callback=_verbose, help="More messages (-vv: debugging)."),
    ]
    for option in options:
        command = option(command)
    return command


def _quiet(ctx, param, value):
    if value:
        QUIET["on"] = True
        logging.getLogger().setLevel(logging.ERROR)


def _verbose(ctx, param, value):
    if value and not QUIET["on"]:
        logging.getLogger().setLevel(logging.INFO if value == 1 else logging.DEBUG)

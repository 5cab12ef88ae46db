"""``kachery <subcommand>``: one entry point for every command.

The mount and server commands live in their own packages and are imported only
when invoked, so ``kachery store`` does not pay for FUSE or aiohttp imports.
"""

import importlib

import click

from .commands import COMMANDS, configure_logging
from .conventions import conventional
from .exit_codes import run_click_command
from .completion import completion_command
from .manage import du_command, rm_command

#: ``kachery``'s own subcommands (beside the standard commands' twins).
MANAGEMENT = {"du": du_command, "rm": rm_command, "completion": completion_command}

# name -> (module, attribute) of commands imported on demand
_LAZY = {
    "mount": ("kachery_fs.cli", "mount_command"),
    "unmount": ("kachery_fs.cli", "unmount_command"),
    "mounts": ("kachery_fs.cli", "mounts_command"),
    "server": ("kachery_server.cli", "server_main"),
}


class _KacheryGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(MANAGEMENT) | set(_LAZY))

    def get_command(self, ctx, name):
        if name in COMMANDS or name in MANAGEMENT:
            return COMMANDS.get(name) or MANAGEMENT[name]
        if name in _LAZY:
            module, attribute = _LAZY[name]
            return getattr(importlib.import_module(module), attribute)
        return None


@conventional
@click.group(cls=_KacheryGroup)
def kachery_group():
    """kachery: store files and directories by hash URL, read them anywhere."""


def cli():
    configure_logging()
    run_click_command(kachery_group, "kachery")

"""``kachery completion bash|zsh|fish``: the shell code that completes every
kachery command, options and subcommands included, so one line in a shell's
start-up file enables all of them::

    eval "$(kachery completion bash)"      # ~/.bashrc
"""

import importlib

import click
from click.shell_completion import get_completion_class

from .conventions import conventional

#: program name -> (module, attribute) of its click command
PROGRAMS = {
    "kachery": ("kachery_cli.main", "kachery_group"),
    "kachery-store": ("kachery_cli.commands", "store_command"),
    "kachery-load": ("kachery_cli.commands", "load_command"),
    "kachery-info": ("kachery_cli.commands", "info_command"),
    "kachery-ls": ("kachery_cli.commands", "ls_command"),
    "kachery-cat": ("kachery_cli.commands", "cat_command"),
    "kachery-verify": ("kachery_cli.commands", "verify_command"),
    "kachery-mount": ("kachery_fs.cli", "mount_command"),
    "kachery-unmount": ("kachery_fs.cli", "unmount_command"),
    "kachery-server": ("kachery_server.cli", "server_main"),
}

SHELLS = ("bash", "zsh", "fish")


@conventional
@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_command(shell):
    """Print the code that enables completion of every kachery command in SHELL.

    \b
    bash: eval "$(kachery completion bash)"   in ~/.bashrc
    zsh:  eval "$(kachery completion zsh)"    in ~/.zshrc
    fish: kachery completion fish | source    in ~/.config/fish/config.fish
    """
    completer = get_completion_class(shell)
    for program, (module, attribute) in PROGRAMS.items():
        command = getattr(importlib.import_module(module), attribute)
        variable = "_" + program.replace("-", "_").upper() + "_COMPLETE"
        click.echo(completer(command, {}, program, variable).source())

"""Printing a command's result: JSON for programs (``--json``), aligned
``key: value`` lines with human sizes for people (the default)."""

import json

import click

from kachery_core.settings import format_size

#: Keys whose values are byte counts: shown as "1.5 MiB (1572864 bytes)".
SIZE_KEYS = {"size", "bytes", "max_bytes", "freed_bytes", "cache_max", "store_bytes", "cache_bytes",
             "temp_bytes"}


def print_records(records, as_json, heading=None):
    """Print a list of result dicts: JSON (one object for one record, else a
    list), or human blocks separated by blank lines. ``heading(record)`` gives
    a block's first line when there are several."""
    if as_json:
        click.echo(json.dumps(records[0] if len(records) == 1 else records, indent=2))
        return
    for index, record in enumerate(records):
        if index:
            click.echo("")
        if heading and len(records) > 1:
            click.echo(f"{heading(record)}:")
        click.echo(human_lines(record))


def human_lines(record, indent=""):
    """``record`` as aligned ``key: value`` lines."""
    width = max((len(key) for key in record), default=0)
    lines = []
    for key, value in record.items():
        label = f"{indent}{key.replace('_', ' ') + ':':<{width + 2}}"
        if isinstance(value, dict):
            lines.append(label.rstrip())
            lines.append(human_lines(value, indent + "  "))
        elif isinstance(value, list) and value:
            lines.append(label.rstrip())
            for item in value:
                lines.append(human_lines(item, indent + "  ") if isinstance(item, dict)
                             else f"{indent}  {item}")
        elif isinstance(value, list):
            lines.append(f"{label}-")
        else:
            lines.append(f"{label}{human_value(key, value)}")
    return "\n".join(lines)


def human_value(key, value):
    if value is None:
        return "-"
    if key in SIZE_KEYS and isinstance(value, int) and not isinstance(value, bool):
        return format_size(value) if value < 1024 else f"{format_size(value)} ({value} bytes)"
    return str(value)

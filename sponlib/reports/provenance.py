"""The line under each README table that says where its numbers come from: model, dtype, device,
versions, windows and the command that made the record."""

from __future__ import annotations


def provenance_line(record: dict) -> str:
    model, device, versions = record["model"], record["device"], record["versions"]
    return (
        f"Model `{model['name']}` ({model['architecture']}, {model['parameters']:,} parameters), "
        f"{record['dtype']}, {device['device']} ({device['name']}), torch {versions['torch']}, "
        f"transformers {versions['transformers']}; {record['windows']} windows of "
        f"{record['window_len']} tokens per text, seed {record['seed']}. "
        f"Command: `{record['command']}`"
    )


def run_line(record: dict) -> str:
    """Model, dtype, device, torch and command of a record that has no protocol windows."""
    model, device = record["model"], record["device"]
    return (
        f"Model `{model['name']}`, {record['dtype']}, {device['device']} ({device['name']}), torch "
        f"{record['versions']['torch']}. Command: `{record['command']}`\n"
    )

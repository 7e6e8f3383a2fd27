"""MkDocs hook: the command-line reference page, generated at build time from ``mlcycle``'s parser.

Each command's ``--help`` as the program prints it, so the page says what ``mlcycle`` does
today, not what it did when someone last copied it.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PAGE = "reference/cli.md"
HELP_WIDTH = "96"  # argparse wraps help text to $COLUMNS


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    root = Path(config.config_file_path).parent
    files.append(File.generated(config, PAGE, content=cli_markdown(root)))
    return files


def cli_markdown(root: Path) -> str:
    """The page: the program's help, then each command's, in the parser's order."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from flows.cli import build_parser

    with _columns(HELP_WIDTH):
        parser = build_parser()
        lines = [
            "# Command line",
            "",
            "`mlcycle` is installed into `.venv` by `make install` (or any `make` target); "
            "activate it with `source .venv/bin/activate`. Its help, as `mlcycle --help` and "
            "`mlcycle COMMAND --help` print it (this page is generated from the program):",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for name, command in _commands(parser).items():
            lines += [f"## `mlcycle {name}`", "", "```text", command.format_help().rstrip()]
            lines += ["```", ""]
    lines += [
        "An error a user can cause or meet ends with one line, `mlcycle: error: ...`, naming "
        "the file, key or server at fault and what to do; `mlcycle -v COMMAND` (or "
        "`MLCYCLE_DEBUG=1`) adds its traceback. See "
        "[Troubleshooting](../guide/troubleshooting.md).",
        "",
    ]
    return "\n".join(lines)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subcommands in this private list
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@contextmanager
def _columns(width: str):
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous

"""MkDocs hook: the architecture page's layers and rooms, generated at build time from the import
contracts (``[tool.importlinter]`` in ``pyproject.toml``, what ``lint-imports`` enforces) and
from the packages' own docstrings, so the picture cannot drift from the code.

The page (``docs/reference/architecture.md``) holds the prose and a marker line; this hook
puts the picture, the may-import table and each room's modules in its place.
``tests/unit/test_layers.py`` checks that the contracts, the packages and the page's prose
name the same rooms. Docstrings are read with ``ast``: nothing is imported (no torch).
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGE = "reference/architecture.md"
MARKER = "<!-- generated: the layers and rooms (docs/hooks/architecture.py) -->"
SENTENCE_END = re.compile(r"(?<=[a-z)`]\.)\s+(?=[A-Z`(])")  # not "e.g. x", not "0.5"


@dataclass(frozen=True)
class Contracts:
    """The import contracts: the layers, top first (each a tuple of rooms side by side), and
    each forbidden contract's (source, forbidden modules)."""

    layers: tuple[tuple[str, ...], ...]
    forbidden: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def rooms(self) -> tuple[str, ...]:
        return tuple(room for layer in self.layers for room in layer)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Put the generated part in the architecture page (MkDocs calls this for every page)."""
    if page.file.src_uri != PAGE:
        return markdown
    root = Path(config.config_file_path).parent
    return markdown.replace(MARKER, generated_markdown(root))


def read_contracts(root: Path) -> Contracts:
    """The contracts of ``pyproject.toml``: its (one) layers contract and its forbidden ones."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers: list[tuple[str, ...]] = []
    forbidden = []
    for contract in config["contracts"]:
        if contract["type"] == "layers":
            layers = [
                tuple(part.strip() for part in layer.split("|")) for layer in contract["layers"]
            ]
        elif contract["type"] == "forbidden":
            for source in contract["source_modules"]:
                forbidden.append((source, tuple(contract["forbidden_modules"])))
    return Contracts(tuple(layers), tuple(forbidden))


def package_rooms(root: Path) -> tuple[str, ...]:
    """The rooms the code has: ``flows``, ``models`` and each package directly under ``tasks``."""
    inner = sorted(f"tasks.{path.parent.name}" for path in (root / "tasks").glob("*/__init__.py"))
    return ("flows", *inner, "models")


def generated_markdown(root: Path) -> str:
    contracts = read_contracts(root)
    lines = ["```text", *picture(contracts), "```", "", *may_import_table(contracts), ""]
    for room in contracts.rooms:
        lines += room_section(root, room)
    return "\n".join(lines)


def picture(contracts: Contracts) -> list[str]:
    """The layers, top first, an arrow down between each: a room imports only downwards."""
    forbidden = dict(contracts.forbidden)
    rows = []
    for index, layer in enumerate(contracts.layers):
        if index:
            rows.append("    |")
            rows.append("    v")
        text = "  |  ".join(layer)
        note = " (side by side: never each other)" if len(layer) > 1 else ""
        for room in layer:
            if room in forbidden:
                note = f" (imports nothing of {', '.join(forbidden[room])})"
        rows.append(f"{text}{note}")
    return rows


def may_import_table(contracts: Contracts) -> list[str]:
    """Each room and what it may import: itself and every layer below it."""
    lines = ["| room | may import (besides itself) |", "| --- | --- |"]
    for index, layer in enumerate(contracts.layers):
        below = [room for lower in contracts.layers[index + 1 :] for room in lower]
        allowed = ", ".join(f"`{room}`" for room in below) or "nothing"
        for room in layer:
            if room in dict(contracts.forbidden):
                allowed = "nothing of ours"
            lines.append(f"| `{room}` | {allowed} |")
    return lines


def room_section(root: Path, room: str) -> list[str]:
    """A room's heading, the first line of its package docstring, and its modules."""
    folder = root / room.replace(".", "/")
    lines = [f"### `{room}`", "", first_line(folder / "__init__.py"), ""]
    lines += ["| module | what it does |", "| --- | --- |"]
    for name, summary in modules_of(folder, room):
        lines.append(f"| `{name}` | {summary} |")
    return [*lines, ""]


def modules_of(folder: Path, package: str) -> list[tuple[str, str]]:
    """(dotted name, first docstring line) of every module in ``folder``, sub-packages after
    their own entry; ``__main__`` and ``__init__`` are the package itself."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / "__init__.py").is_file():
            name = f"{package}.{path.name}"
            found.append((name, first_line(path / "__init__.py")))
            found += modules_of(path, name)
        elif path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
            found.append((f"{package}.{path.stem}", first_line(path)))
    return found


def first_line(path: Path) -> str:
    """The first sentence of a module's docstring, on one line, as table-safe Markdown."""
    docstring = (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    if not docstring:
        return "(no docstring)"
    paragraph = " ".join(docstring.split("\n\n")[0].split())
    sentence = SENTENCE_END.split(paragraph, maxsplit=1)[0]
    return sentence.replace("|", "\\|")


if __name__ == "__main__":  # print the generated part: python docs/hooks/architecture.py
    print(generated_markdown(Path(__file__).resolve().parents[2]))

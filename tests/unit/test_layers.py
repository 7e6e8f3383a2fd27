"""The import layers of pyproject.toml hold (`lint-imports` fails on a wrong arrow), and the
architecture page draws the same layers and rooms."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tests.helpers import REPO_ROOT


def test_import_contracts_are_kept():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


# --- the architecture page (docs/reference/architecture.md) and the contracts agree ---------

PAGE = REPO_ROOT / "docs" / "reference" / "architecture.md"


@pytest.fixture(scope="module")
def architecture() -> ModuleType:
    """docs/hooks/architecture.py, the MkDocs hook that draws the page's layers."""
    spec = importlib.util.spec_from_file_location(
        "architecture_hook", REPO_ROOT / "docs" / "hooks" / "architecture.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def described_rooms(text: str) -> list[str]:
    """The rooms the page's prose describes: its ``- **`room`**:`` bullets."""
    return re.findall(r"^- \*\*`([a-z_.]+)`\*\*:", text, flags=re.MULTILINE)


def test_the_contracts_name_every_package_and_only_packages(architecture):
    """Each room of the layers contract exists, and every package under tasks/ is in a layer:
    a new room must be given its place before the page (and lint-imports) can draw it."""
    rooms = architecture.read_contracts(REPO_ROOT).rooms
    assert sorted(rooms) == sorted(architecture.package_rooms(REPO_ROOT))
    assert len(set(rooms)) == len(rooms)


def test_the_page_describes_each_room_of_the_contracts_in_their_order(architecture):
    rooms = architecture.read_contracts(REPO_ROOT).rooms
    assert described_rooms(PAGE.read_text()) == list(rooms)


def test_every_folder_the_page_names_exists():
    named = set(re.findall(r"`((?:tasks|flows|models)/[a-z_/]+/)`", PAGE.read_text()))
    assert named, "the page names the packages it describes"
    assert [folder for folder in sorted(named) if not (REPO_ROOT / folder).is_dir()] == []


def test_the_build_puts_the_layers_and_every_module_in_the_page(architecture):
    page = SimpleNamespace(file=SimpleNamespace(src_uri=architecture.PAGE))
    config = SimpleNamespace(config_file_path=str(REPO_ROOT / "mkdocs.yml"))
    built = architecture.on_page_markdown(PAGE.read_text(), page, config, files=None)
    assert architecture.MARKER not in built and PAGE.read_text().count(architecture.MARKER) == 1
    picture = built.split("```text")[-1].split("```")[0]
    layers = architecture.read_contracts(REPO_ROOT).layers
    order = [picture.index(" | ".join(layer).replace(" | ", "  |  ")) for layer in layers]
    assert order == sorted(order)  # top to bottom, as the contract lists them
    for path in [*REPO_ROOT.glob("tasks/**/*.py"), *REPO_ROOT.glob("flows/**/*.py")]:
        if path.stem not in ("__init__", "__main__"):
            module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            assert f"| `{module}` |" in built, module
    for room in architecture.read_contracts(REPO_ROOT).rooms:
        assert f"| `{room}` | " in built  # its row in the may-import table


def test_the_may_import_table_follows_the_layers(architecture):
    contracts = architecture.Contracts(
        layers=(("top",), ("left", "right"), ("floor",)), forbidden=(("floor", ("top",)),)
    )
    assert architecture.may_import_table(contracts)[2:] == [
        "| `top` | `left`, `right`, `floor` |",
        "| `left` | `floor` |",
        "| `right` | `floor` |",
        "| `floor` | nothing of ours |",
    ]

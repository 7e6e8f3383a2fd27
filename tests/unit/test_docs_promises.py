"""The docs' promises and the tests stay in step.

Each entry of the troubleshooting page (a paragraph that opens in bold) names the tests that
check it, as ``tests/<path>.py::test_<name>``; every such name in the README and the docs is a
test that exists. The numbers the docs promise for waits that are too long to wait for in a
test (the registry lock's 11 minutes, the 30 polls between tries of a failed load) are the
code's defaults; the integration tests check the behaviour through shorter settings.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from tests.helpers import REPO_ROOT

TROUBLESHOOTING = REPO_ROOT / "docs" / "guide" / "troubleshooting.md"
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def entries(page: str) -> list[str]:
    """The page's entries: a paragraph that opens in bold, with the paragraphs under it."""
    found: list[str] = []
    inside = False  # in an entry: until the next bold paragraph or heading
    for block in page.split("\n\n"):
        if block.startswith("**"):
            found.append(block)
            inside = True
        elif block.startswith("#"):
            inside = False
        elif inside:
            found[-1] += "\n\n" + block
    return found


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """The test functions a module defines (top level or in a class)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    )


def reference_problems(text: str, root: Path = REPO_ROOT) -> list[str]:
    """Each ``tests/...py::test_x`` in ``text`` that names no test of the repository."""
    problems = []
    for module, name in TEST_REFERENCE.findall(text):
        path = root / module
        if not path.is_file():
            problems.append(f"{module}: no such test module")
        elif name not in defined_tests(path):
            problems.append(f"{module}::{name}: no such test")
    return problems


def entry_problems(page: str, root: Path = REPO_ROOT) -> list[str]:
    problems = []
    for entry in entries(page):
        title = entry.splitlines()[0][:70]
        if not TEST_REFERENCE.search(entry):
            problems.append(f"{title}: names no test")
        problems += [f"{title}: {problem}" for problem in reference_problems(entry, root)]
    return problems


def test_every_troubleshooting_entry_names_tests_that_exist():
    page = TROUBLESHOOTING.read_text(encoding="utf-8")
    assert len(entries(page)) >= 35  # every entry counted, none merged into another
    assert entry_problems(page) == []


def test_every_test_the_readme_and_the_docs_name_exists():
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    problems = [
        f"{page.relative_to(REPO_ROOT)}: {problem}"
        for page in pages
        for problem in reference_problems(page.read_text(encoding="utf-8"))
    ]
    assert problems == []


def test_the_check_catches_an_entry_without_a_test_and_a_test_that_is_gone(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_here():\n    pass\n")
    page = (
        "# Page\n\nIntro naming `tests/test_x.py::test_gone` outside any entry.\n\n"
        "## Section\n\n"
        "**First.** Tested. *Tests:* `tests/test_x.py::test_here`.\n\n"
        "**Second.** Its test was renamed.\n\nMore of it: `tests/test_x.py::test_gone`.\n\n"
        "**Third.** Its module is gone: `tests/test_y.py::test_here`.\n\n"
        "## Another\n\n"
        "**Fourth.** Nothing named.\n\nA second paragraph.\n\n"
        "Under a heading, an intro is no entry.\n"
    )
    assert [entry.split("**")[1] for entry in entries(page)] == [
        "First.",
        "Second.",
        "Third.",
        "Fourth.",
    ]
    assert entry_problems(page, tmp_path) == [
        "**Second.** Its test was renamed.: tests/test_x.py::test_gone: no such test",
        "**Third.** Its module is gone: `tests/test_y.py::test_here`.: "
        "tests/test_y.py: no such test module",
        "**Fourth.** Nothing named.: names no test",
    ]


def test_the_registry_lock_gives_up_after_the_11_minutes_the_docs_promise():
    from tasks.registry.lock import LOCK_WAIT_S

    registry = (REPO_ROOT / "docs" / "guide" / "registry.md").read_text(encoding="utf-8")
    [minutes] = re.findall(r"gives up with a clear error after (\d+) minutes", registry)
    assert LOCK_WAIT_S == int(minutes) * 60 == 660


def test_a_failed_load_is_tried_again_every_30_polls_as_the_docs_promise():
    from tasks.serving.model import RETRY_FAILED_AFTER_POLLS

    serving = (REPO_ROOT / "docs" / "guide" / "serving.md").read_text(encoding="utf-8")
    [polls] = re.findall(r"tries that version again only every (\d+) polls", serving)
    assert RETRY_FAILED_AFTER_POLLS == int(polls) == 30

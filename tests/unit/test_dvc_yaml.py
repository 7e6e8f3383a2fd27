"""dvc.yaml declares what each stage reads: its code deps are exactly the modules that shape
its outputs, so a change to serving or registry code never makes `dvc status` stale, and a
change to a stage's own code always does."""

from __future__ import annotations

import grimp
import pytest
import yaml

from models import MODEL_NAMES
from tests.helpers import REPO_ROOT

# Modules that only connect, report or parse: a stage imports them, but they do not shape its
# outputs (a param's *value* is a params dep; its parsing code is not).
PLUMBING = {
    "tasks.core.config",
    "tasks.core.console",
    "tasks.core.errors",
    "tasks.core.paths",
    "tasks.core.tracking",
    "tasks.core.stage_run",
    "tasks.core.lineage",
    "tasks.core.dvc",
}
# Imported to record reports in the run's MLflow run, not to make the stage's outputs.
REPORTING_ONLY = {"train": {"tasks.validation.gate"}}
STAGES = ("collect", "validate", "preprocess", "select", "train", "evaluate")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("tasks", "models")


@pytest.fixture(scope="module")
def stages() -> dict:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def shaping_modules(graph: grimp.ImportGraph, stage: str) -> set[str]:
    """The stage's module and everything it imports, not walking into plumbing."""
    skip = PLUMBING | REPORTING_ONLY.get(stage, set())
    seen, todo = set(), [f"tasks.stages.{stage}"]
    while todo:
        module = todo.pop()
        if module in seen or any(module == s or module.startswith(f"{s}.") for s in skip):
            continue
        seen.add(module)
        todo.extend(graph.find_modules_directly_imported_by(module))
    return seen


def module_file(module: str) -> str:
    path = module.replace(".", "/")
    return f"{path}/__init__.py" if (REPO_ROOT / path).is_dir() else f"{path}.py"


def covered(file: str, deps: list[str]) -> bool:
    """Listed itself or inside a listed folder."""
    return any(file == dep or file.startswith(f"{dep.rstrip('/')}/") for dep in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_that_shapes_a_stage_is_a_dep(graph, stages, stage):
    deps = stages[stage]["deps"]
    missing = sorted(
        file for file in map(module_file, shaping_modules(graph, stage)) if not covered(file, deps)
    )
    assert not missing, f"dvc.yaml stage {stage} should list {missing} as deps"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_lists_code_it_does_not_import(graph, stages, stage):
    files = {module_file(module) for module in shaping_modules(graph, stage)}
    code_deps = [d for d in stages[stage]["deps"] if d.startswith(("tasks/", "models/"))]
    stale = [
        dep
        for dep in code_deps
        if not any(f == dep or f.startswith(f"{dep.rstrip('/')}/") for f in files)
    ]
    assert not stale, f"dvc.yaml stage {stage} lists {stale}, which it does not import"


def test_train_reads_its_family_and_options_from_the_selection_only(stages):
    """Family options reach train through reports/selection.json (select's output), so a change
    to a family train does not train re-runs select, whose unchanged file leaves train alone."""
    train, select = stages["train"], stages["select"]
    assert "reports/selection.json" in train["deps"]
    assert "reports/selection.json" in select["outs"]
    assert not [p for p in train["params"] if p.split(".")[1:2] in ([n] for n in MODEL_NAMES)]
    assert {"train", "select"} <= set(select["params"])


def test_the_selection_cannot_see_the_test_split(stages):
    data_deps = [d for d in stages["select"]["deps"] if d.startswith("data/")]
    assert data_deps and not [d for d in data_deps if "test" in d or d == "data/processed"]


def test_python_bytecode_is_no_part_of_a_stage_dependency():
    """Folder deps (tasks/training, tasks/validation) were hashed with their __pycache__, which
    differs between machines: a fresh clone saw every stage as stale."""
    from dvc.repo import Repo

    with Repo(str(REPO_ROOT)) as repo:
        ignore = repo.dvcignore
        for path in ("tasks/training/__pycache__", "tasks/validation/__pycache__/gate.pyc"):
            assert ignore.is_ignored(repo.fs, str(REPO_ROOT / path)), path

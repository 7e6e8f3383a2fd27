import shutil

import pytest

from tasks.config import ConfigError, load_params
from tasks.pipeline import PipelineSummary, apply_params, summary_markdown
from tests.conftest import REPO_ROOT


def test_apply_params_changes_only_what_differs_and_keeps_comments(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    original = path.read_text()
    wanted = load_params(path, overrides=["train.epochs=3", "train.cnn.channels=[8, 16]"])
    applied = apply_params(wanted, path)
    assert applied == wanted == load_params(path)
    changed = [
        (a, b)
        for a, b in zip(original.splitlines(), path.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 2
    assert changed[0][1].strip().startswith("epochs: 3")
    assert "null" in path.read_text() and "# where torchvision datasets are" in path.read_text()


def test_apply_params_none_keeps_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", path)
    before = path.stat().st_mtime_ns
    assert apply_params(None, path) == load_params(path)
    assert path.stat().st_mtime_ns == before


def test_apply_params_refuses_a_broken_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {epochs: 1}\n")
    with pytest.raises(ConfigError, match="collect: missing"):
        apply_params(None, path)


def test_summary_markdown_is_a_table_with_the_run_link():
    summary = PipelineSummary(
        run_id="abc",
        run_url="http://mlflow/#/runs/abc",
        model="cnn",
        accuracy=0.98,
        macro_f1=0.97,
        baseline={"model": "logistic_regression", "accuracy": 0.9, "macro_f1": 0.89},
        stages_run=("train",),
        stages_skipped=("collect",),
        data_versions={"data/raw": "0123456789abcdef.dir"},
    )
    text = summary_markdown(summary)
    assert "| accuracy | 0.9800 | 0.9000 |" in text
    assert "[abc](http://mlflow/#/runs/abc)" in text
    assert "`data/raw` 0123456789ab" in text

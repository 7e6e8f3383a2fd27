"""The promotion gate's arithmetic and the registry's small pure helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.core.config import ConfigError, RegistryParams, load_params
from tasks.core.lineage import TAG_CLASS_NAMES, TAG_INPUT_SHAPE
from tasks.registry.check import _score_problem
from tasks.registry.gate import decide, why_not_comparable
from tests.helpers import REPO_ROOT


@pytest.fixture
def policy() -> RegistryParams:
    return RegistryParams(
        model_name="m",
        metric="accuracy",
        min_improvement=0.01,
        guard_metrics=("macro_f1",),
        min_score=0.9,
        check_samples=8,
    )


def scores(accuracy: float, macro_f1: float) -> dict[str, float]:
    return {"accuracy": accuracy, "macro_f1": macro_f1}


def test_first_model_needs_the_floor(policy):
    assert decide(scores(0.95, 0.95), None, policy).promote
    below = decide(scores(0.85, 0.95), None, policy)
    assert not below.promote
    assert below.reason == "accuracy 0.8500 is below the floor registry.min_score 0.9000"


def test_better_by_the_margin_is_promoted(policy):
    # 0.99 - 0.98 is 0.010000000000000009 in floats: exactly the margin, promoted.
    decision = decide(scores(0.99, 0.95), scores(0.98, 0.95), policy, "3")
    assert decision.promote
    assert "beats champion v3 0.9800 by +0.0100" in decision.reason


def test_tie_or_gain_within_the_margin_is_not_promoted(policy):
    assert not decide(scores(0.95, 0.95), scores(0.95, 0.95), policy).promote
    within = decide(scores(0.955, 0.96), scores(0.95, 0.95), policy, "2")
    assert not within.promote
    assert "does not beat it by registry.min_improvement 0.0100" in within.reason


def test_zero_margin_still_needs_a_strict_gain(policy):
    lenient = policy.model_copy(update={"min_improvement": 0.0})
    assert not decide(scores(0.95, 0.95), scores(0.95, 0.95), lenient).promote
    assert decide(scores(0.951, 0.95), scores(0.95, 0.95), lenient).promote


def test_worse_is_kept_as_challenger(policy):
    assert not decide(scores(0.92, 0.92), scores(0.97, 0.97), policy).promote


def test_a_guard_metric_regression_blocks_promotion(policy):
    decision = decide(scores(0.99, 0.90), scores(0.95, 0.91), policy, "4")
    assert not decision.promote
    assert "guard metric macro_f1 drops from 0.9100 (champion v4) to 0.9000" in decision.reason
    unguarded = policy.model_copy(update={"guard_metrics": ()})
    assert decide(scores(0.99, 0.90), scores(0.95, 0.91), unguarded).promote


def test_the_floor_holds_against_a_weak_champion(policy):
    assert not decide(scores(0.80, 0.80), scores(0.50, 0.50), policy).promote


def test_the_gate_metric_is_configurable(policy):
    by_f1 = policy.model_copy(update={"metric": "macro_f1", "guard_metrics": ("accuracy",)})
    assert decide(scores(0.95, 0.97), scores(0.95, 0.95), by_f1).promote
    assert not decide(scores(0.96, 0.955), scores(0.95, 0.95), by_f1).promote


def test_champions_of_another_shape_or_classes_are_not_why_not_comparable():
    ours = {TAG_INPUT_SHAPE: json.dumps([8, 8, 1]), TAG_CLASS_NAMES: json.dumps(["0", "1"])}
    assert why_not_comparable(ours, dict(ours)) is None
    other_shape = {**ours, TAG_INPUT_SHAPE: json.dumps([28, 28, 1])}
    assert "input shape [28, 28, 1] differ" in why_not_comparable(ours, other_shape)
    other_classes = {**ours, TAG_CLASS_NAMES: json.dumps(["a", "b"])}
    assert "classes" in why_not_comparable(ours, other_classes)


def test_load_check_compares_scores_with_the_local_model():
    local = np.array([[1.0, 2.0], [3.0, 0.5]], dtype=np.float32)
    assert _score_problem(local.copy(), 2, local) is None
    assert "differ from the local model's by up to 0.5" in _score_problem(local + 0.5, 2, local)
    assert "NaN or infinity" in _score_problem(np.array([[np.nan, 1.0]] * 2), 2, None)
    assert "expected scores of shape (2, classes)" in _score_problem(np.ones(2), 2, None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("registry.metric=loss", "registry.metric: Input should be 'accuracy' or 'macro_f1'"),
        ("registry.guard_metrics=[f2]", "registry.guard_metrics.0"),
        ("registry.model_name=has space", "registry.model_name: String should match pattern"),
        ("registry.min_improvement=-0.1", "registry.min_improvement"),
        ("registry.champion=3", "registry.champion is not a key of params.yaml"),
    ],
)
def test_bad_registry_params_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_params(REPO_ROOT / "params.yaml", overrides=[override])


def test_a_run_whose_params_differ_from_dvc_lock_is_refused(tmp_path):
    """Two runs in one workspace once left a run saying seed 33 beside a model trained with
    seed 34 (dvc.lock): registration refuses it, naming the key."""
    import subprocess
    import sys
    import types

    from tasks.registry.candidate import _check_lock_params
    from tasks.registry.store import RegistryError

    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: x\n    params: [train.seed, train.cnn]\n"
    )
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: x\n    params:\n      params.yaml:\n"
        "        train.seed: 34\n        train.cnn:\n          dropout: 0.25\n"
    )

    def run(**params: str):
        return types.SimpleNamespace(
            data=types.SimpleNamespace(params=params), info=types.SimpleNamespace(run_id="r1")
        )

    _check_lock_params(run(**{"train.seed": "34", "train.cnn.dropout": "0.25"}), tmp_path)
    with pytest.raises(RegistryError, match=r"train\.seed 33 \(run\) vs 34 \(dvc\.lock\)"):
        _check_lock_params(run(**{"train.seed": "33", "train.cnn.dropout": "0.25"}), tmp_path)
    with pytest.raises(RegistryError, match=r"train\.cnn\.dropout 0\.5 \(run\) vs 0\.25"):
        _check_lock_params(run(**{"train.seed": "34", "train.cnn.dropout": "0.5"}), tmp_path)
    # A float field written as a whole number: logged 600.0, locked 600; the same value.
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  train:\n    cmd: x\n    params:\n      params.yaml:\n"
        "        train.seed: 34\n        train.cnn:\n          dropout: 1\n"
    )
    _check_lock_params(run(**{"train.seed": "34", "train.cnn.dropout": "1.0"}), tmp_path)


@pytest.mark.parametrize("typed", ["1", "3", "10", "1234"])
def test_canonical_version_numbers_are_taken_as_typed(typed):
    from tasks.registry.store import parse_version

    assert parse_version(typed) == typed


@pytest.mark.parametrize(
    "typed", ["01", " 1", "1 ", "1\n", "+1", "-1", "0", "1.0", "1e0", "", "v1", "\u0661"]
)
def test_loose_version_numbers_are_refused_naming_what_was_typed(typed):
    from tasks.registry.store import RegistryError, parse_version

    with pytest.raises(RegistryError) as refused:
        parse_version(typed)
    assert str(refused.value).startswith(f"version {typed!r} is not a version number: ")


def test_load_check_compares_scores_with_the_recorded_ones():
    from tasks.registry.check import _recorded_problem

    recorded = np.array([[1.0, 2.0], [3.0, 0.5]], dtype=np.float32)
    assert _recorded_problem(recorded.copy(), recorded) is None
    assert "differently from its registration (by up to 0.5)" in _recorded_problem(
        recorded + 0.5, recorded
    )
    assert "with shape (2, 3)" in _recorded_problem(np.ones((2, 3)), recorded)


def test_manual_moves_check_registry_check_samples_test_images(
    tracking_store, tmp_path, monkeypatch, policy
):
    """promote, force_promote and rollback score the first ``registry.check_samples`` test
    images of the workspace, as registration does (they once scored a fixed 64)."""
    from mlflow.tracking import MlflowClient

    from tasks.core.files import ImageDataset, write_splits
    from tasks.registry import manual
    from tasks.registry.store import CHAMPION, alias_map

    processed = tmp_path / "processed"
    test = ImageDataset(np.zeros((12, 8, 8, 1), np.uint8), np.zeros(12, np.int64), ("0", "1"))
    write_splits({"test": (test, np.arange(12))}, processed, {"class_names": ["0", "1"]})
    client = MlflowClient()
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", "s", tags={TAG_INPUT_SHAPE: json.dumps([8, 8, 1])})
    checked: list[tuple[str, int]] = []

    def check_version(name, version, samples):  # the check's own loading is tested elsewhere
        checked.append((version, len(samples)))

    monkeypatch.setattr(manual, "check_version", check_version)
    assert policy.check_samples == 8
    assert manual.promote("m", "1", policy, processed) is None
    assert manual.force_promote("m", "2", policy, processed) == "1"
    assert manual.rollback("m", policy, processed) == ("2", "1")
    assert checked == [("1", 8), ("2", 8), ("1", 8)]
    assert alias_map("m")[CHAMPION] == "1"
    few = policy.model_copy(update={"check_samples": 3})
    manual.promote("m", "2", few, processed)
    assert checked[-1] == ("2", 3)

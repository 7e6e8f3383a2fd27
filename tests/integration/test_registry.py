"""The model registry against a real `mlflow server` (SQLite; PostgreSQL too where installed).

Each test trains tiny real models on generated data, logs them to the server, and registers
them with the same functions (or the same flow, or the same CLI) the pipeline uses. Where a
test fixes a candidate's metrics, it fixes them relative to the champion's real score on the
same test split, so the gate decides as it would with trained models.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import replace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tasks.core.files import read_split
from tasks.core.lineage import TAG_CHECK, TAG_CLASS_NAMES, TAG_DECISION, TAG_PREVIOUS_CHAMPION
from tasks.core.tracking import ModelVersionNotFound, TrackingError
from tasks.lifecycle.prefect_api import prefect_api
from tasks.registry.candidate import Candidate, find_candidate
from tasks.registry.check import LoadCheckFailed
from tasks.registry.gate import promote_if_better, score_version
from tasks.registry.lock import registry_lock
from tasks.registry.manual import force_promote, promote, rollback
from tasks.registry.store import CHALLENGER, CHAMPION, RegistryError, alias_map
from tasks.registry.versions import create_version
from tests.helpers import WITHIN_SECONDS
from tests.integration.helpers import (
    BIN,
    MlflowService,
    Workspace,
    corrupt_logged_model,
    make_workspace,
    prefect_flow_runs,
    run,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def server_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"registry-{uuid.uuid4().hex[:8]}")
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


@pytest.fixture
def workspace(
    server_uri, prefect_server, processed_dir, tiny_params, tmp_path, monkeypatch
) -> Workspace:
    monkeypatch.chdir(tmp_path)
    name = f"m-{uuid.uuid4().hex[:8]}"
    return make_workspace(tmp_path / "ws", processed_dir, tiny_params, name, prefect_server)


def description(name: str, version: str) -> str:
    return MlflowClient().get_model_version(name, version).description


def test_the_gate_decides_every_case_on_the_same_test_split(workspace: Workspace):
    name = workspace.name
    test, _ = read_split(workspace.processed, "test")
    strict = workspace.params.registry.model_copy(
        update={"min_improvement": 0.05, "guard_metrics": ("macro_f1",), "min_score": 0.0}
    )

    # First model below the floor: registered, challenger, but no champion.
    weak = replace(workspace.train(seed=1), metrics={"accuracy": 0.5, "macro_f1": 0.5})
    result = workspace.register(weak, strict.model_copy(update={"min_score": 0.9}))
    assert not result.promoted and result.champion is None
    assert alias_map(name) == {CHALLENGER: result.version}
    assert "below the floor registry.min_score 0.9000" in description(name, result.version)

    # First model above the floor: champion.
    first = workspace.train(seed=2)
    result = workspace.register(first, strict)
    assert result.promoted, result.reason
    champion = result.version
    assert alias_map(name) == {CHALLENGER: champion, CHAMPION: champion}
    scored = score_version(name, champion, test)  # the champion on this very split
    assert scored == pytest.approx(first.metrics, abs=1e-6)

    def candidate(seed: int, accuracy: float, macro_f1: float) -> Candidate:
        return replace(
            workspace.train(seed=seed), metrics={"accuracy": accuracy, "macro_f1": macro_f1}
        )

    cases = [
        # (seed, accuracy gain, macro-F1 gain, promoted?, reason fragment)
        (
            3,
            0.02,
            0.02,
            False,
            "does not beat it by registry.min_improvement 0.0500",
        ),  # tie within margin
        (4, -0.10, -0.10, False, "does not beat it"),  # worse
        (5, 0.10, -0.01, False, "guard metric macro_f1 drops"),  # guard regression
        (6, 0.10, 0.10, True, "beats champion"),  # better
    ]
    for seed, gain, f1_gain, promoted, reason in cases:
        before = alias_map(name)[CHAMPION]
        result = workspace.register(
            candidate(seed, scored["accuracy"] + gain, scored["macro_f1"] + f1_gain), strict
        )
        aliases = alias_map(name)
        assert result.promoted is promoted, (seed, result.reason)
        assert reason in result.reason and reason in description(name, result.version)
        assert aliases[CHALLENGER] == result.version
        assert aliases[CHAMPION] == (result.version if promoted else before)
        assert result.champion_metrics == pytest.approx(scored)
    tags = MlflowClient().get_model_version(name, aliases[CHAMPION]).tags
    assert tags[TAG_PREVIOUS_CHAMPION] == champion
    assert tags[TAG_DECISION] == "promoted to champion"


def test_the_same_model_is_never_registered_twice(workspace: Workspace):
    candidate = workspace.train(seed=1)
    first = workspace.register(candidate)
    again = workspace.register(candidate)  # a retry of the same pipeline run
    assert again.version == first.version
    assert len(MlflowClient().search_model_versions(f"name = '{workspace.name}'")) == 1
    assert "already the champion" in again.reason


def test_registration_refuses_runs_that_did_not_finish(workspace: Workspace):
    candidate = workspace.train(seed=1)
    MlflowClient().set_terminated(candidate.run_id, "FAILED")
    with pytest.raises(RegistryError, match="is FAILED: only finished, evaluated runs"):
        find_candidate(candidate.run_id, workspace.model_file, workspace.root)


def test_options_of_families_not_trained_do_not_block_registration(workspace: Workspace):
    candidate = workspace.train(seed=1)
    assert workspace.params.train.model == "cnn"
    mlp = workspace.params.train.mlp.model_copy(update={"dropout": 0.4})
    workspace.update("train", mlp=mlp)  # DVC would not retrain the CNN for this either
    found = find_candidate(candidate.run_id, workspace.model_file, workspace.root)
    assert found.run_id == candidate.run_id
    workspace.update("train", cnn=workspace.params.train.cnn.model_copy(update={"dropout": 0.4}))
    with pytest.raises(RegistryError, match=r"train\.cnn\.dropout 0\.25 -> 0\.4"):
        find_candidate(candidate.run_id, workspace.model_file, workspace.root)


def test_a_version_that_fails_to_load_is_rolled_back_and_the_champion_stays(
    workspace: Workspace, mlflow_service: MlflowService, monkeypatch: pytest.MonkeyPatch
):
    from flows.registry import register_model

    monkeypatch.chdir(workspace.root)
    champion = workspace.register(workspace.train(seed=1)).version
    broken = workspace.train(seed=2, epochs=3)
    corrupt_logged_model(mlflow_service, broken.model_id)

    refused = pytest.raises(
        LoadCheckFailed, match="failed the load-back check: its model file in the artifact store"
    )  # damaged bytes: the md5 refuses them before anything tries to load them
    with prefect_api(), refused:  # the Prefect API the CLI gives its flows
        register_model(run_id=broken.run_id, params=workspace.params)  # the real flow

    versions = MlflowClient().search_model_versions(f"name = '{workspace.name}'")
    failed = next(v for v in versions if v.version != champion)
    assert failed.tags[TAG_CHECK] == "failed"
    assert failed.description.startswith("Not served:")
    assert alias_map(workspace.name) == {CHAMPION: champion, CHALLENGER: champion}
    # and by hand: promoting it fails the same check, the champion stays
    with pytest.raises(LoadCheckFailed):
        promote(workspace.name, failed.version, workspace.params.registry, workspace.processed)
    assert alias_map(workspace.name)[CHAMPION] == champion


def test_a_champion_that_no_longer_loads_does_not_block_registration(
    workspace: Workspace, mlflow_service: MlflowService
):
    first = workspace.train(seed=1)
    champion = workspace.register(first).version
    corrupt_logged_model(mlflow_service, first.model_id)
    result = workspace.register(workspace.train(seed=2))
    assert result.promoted, result.reason
    # damaged bytes: the md5 says it is not the registered model before anything loads it
    assert result.reason.startswith(f"champion v{champion} is not the model it was registered")
    assert alias_map(workspace.name)[CHAMPION] == result.version


def test_retiring_a_version_puts_the_champion_it_replaced_back(workspace: Workspace):
    from tasks.registry.versions import retire_version

    first = workspace.register(workspace.train(seed=1)).version
    better = replace(workspace.train(seed=2), metrics={"accuracy": 2.0, "macro_f1": 2.0})
    second = workspace.register(better).version
    retire_version(workspace.name, second, "a later step failed")
    assert alias_map(workspace.name) == {CHAMPION: first}
    assert MlflowClient().get_model_version(workspace.name, second).tags[TAG_CHECK] == "failed"


def test_rollback_and_manual_promote_move_the_champion(workspace: Workspace):
    name = workspace.name
    first = workspace.register(workspace.train(seed=1)).version
    better = replace(workspace.train(seed=2), metrics={"accuracy": 2.0, "macro_f1": 2.0})
    second = workspace.register(better).version
    assert alias_map(name)[CHAMPION] == second

    assert rollback(name, workspace.params.registry, workspace.processed) == (second, first)
    assert alias_map(name)[CHAMPION] == first
    with pytest.raises(RegistryError, match=f"champion v{first} .* replaced no earlier champion"):
        rollback(name, workspace.params.registry, workspace.processed)

    assert promote(name, second, workspace.params.registry, workspace.processed) == first
    assert alias_map(name)[CHAMPION] == second
    assert MlflowClient().get_model_version(name, second).tags[TAG_DECISION] == "promoted by hand"
    with pytest.raises(ModelVersionNotFound, match="has no version 99"):
        promote(name, "99", workspace.params.registry, workspace.processed)
    with pytest.raises(RegistryError, match="already the champion"):
        promote(name, second, workspace.params.registry, workspace.processed)


def test_server_down_fails_fast_moves_nothing_and_a_retry_completes(
    processed_dir, tiny_params, prefect_server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    service = MlflowService(tmp_path / "server")
    service.root.mkdir()
    service.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", service.uri)
        mlflow.set_tracking_uri(service.uri)
        workspace = make_workspace(
            tmp_path / "ws", processed_dir, tiny_params, "down-up", prefect_server
        )
        candidate = workspace.train(seed=1)
        registered = create_version(candidate, workspace.name)
        service.stop()

        started = time.monotonic()
        with pytest.raises(
            TrackingError, match=f"MLflow {service.uri}: could not move the aliases"
        ):
            promote_if_better(candidate, registered, workspace.params.registry, workspace.processed)
        assert time.monotonic() - started < WITHIN_SECONDS  # the docs' "within seconds"
        started = time.monotonic()
        with pytest.raises(TrackingError, match="cannot be reached"):
            find_candidate(candidate.run_id, workspace.model_file, workspace.root)
        assert time.monotonic() - started < WITHIN_SECONDS

        service.start()  # same port, same store
        assert alias_map(workspace.name) == {}  # nothing moved while it was down
        result = workspace.register(candidate)  # the retry
        assert result.version == registered.version and result.promoted
        assert alias_map(workspace.name)[CHAMPION] == registered.version
        assert len(MlflowClient().search_model_versions("name = 'down-up'")) == 1
    finally:
        service.stop()
        mlflow.set_tracking_uri(None)


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_registrations_leave_one_champion_the_best(
    backend, request, processed_dir, tiny_params, prefect_server, tmp_path, monkeypatch
):
    """Two `mlcycle register` flow runs at once, from two workspaces, on one server."""
    uri = request.getfixturevalue(
        "mlflow_server" if backend == "sqlite" else "postgres_mlflow_server"
    )
    monkeypatch.chdir(tmp_path)
    experiment = f"concurrent-{uuid.uuid4().hex[:8]}"
    name = f"concurrent-{backend}-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    mlflow.set_tracking_uri(uri)
    try:
        workspaces = [
            make_workspace(tmp_path / f"ws{i}", processed_dir, tiny_params, name, prefect_server)
            for i in (1, 2)
        ]
        run_ids = [
            ws.train(seed=seed, epochs=1 + 3 * seed).run_id for seed, ws in enumerate(workspaces)
        ]
        environment = {
            "MLFLOW_TRACKING_URI": uri,
            "MLFLOW_EXPERIMENT_NAME": experiment,
            "PATH": f"{BIN}:/usr/bin:/bin",
        }
        processes = [
            subprocess.Popen(
                [str(BIN / "mlcycle"), "register", "--run", run_id],
                cwd=ws.root,
                env={**os.environ, **environment},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for ws, run_id in zip(workspaces, run_ids, strict=True)
        ]
        outputs = [process.communicate(timeout=300)[0] for process in processes]
        for process, output in zip(processes, outputs, strict=True):
            assert process.returncode == 0, output[-3000:]

        client = MlflowClient()
        versions = client.search_model_versions(f"name = '{name}'")
        assert sorted(v.version for v in versions) == ["1", "2"]
        assert all(v.tags[TAG_CHECK] == "passed" for v in versions)
        accuracy = {v.version: float(v.tags["accuracy"]) for v in versions}
        champion = alias_map(name)[CHAMPION]
        assert accuracy[champion] == max(accuracy.values())
        # Whichever took the lock first became the first champion. The other version either
        # was that first champion, replaced by this one (which names it), or came second,
        # was no better, and stayed a challenger (and this one names no predecessor).
        [other] = [v for v in versions if v.version != champion]
        winner = client.get_model_version(name, champion).tags
        assert winner[TAG_DECISION] == "promoted to champion"
        replaced = winner.get(TAG_PREVIOUS_CHAMPION)
        assert (other.tags[TAG_DECISION], replaced) in {
            ("promoted to champion", other.version),
            ("kept as challenger", None),
        }, (other.tags, winner)
        # no lock shows up in the registry, and both runs released theirs
        assert {m.name for m in client.search_registered_models(f"name LIKE '{name}%'")} == {name}
        with registry_lock(name, wait_s=5):
            pass
    finally:
        mlflow.set_tracking_uri(None)


def test_register_cli_reports_the_version_and_lists_it(workspace: Workspace, server_uri: str):
    candidate = workspace.train(seed=1)
    env = {"MLFLOW_TRACKING_URI": server_uri}
    result = run([str(BIN / "mlcycle"), "register"], cwd=workspace.root, **env)
    assert f"registered: {workspace.name} version 1, promoted to champion" in result.stdout
    listing = run([str(BIN / "mlcycle"), "models"], cwd=workspace.root, **env).stdout
    row = next(line for line in listing.splitlines() if line.strip().startswith("1 "))
    assert "challenger,champion" in row and f"{candidate.metrics['accuracy']:.4f}" in row
    assert "passed" in row


@pytest.mark.e2e
def test_promote_and_rollback_by_hand_leave_prefect_flow_runs(
    workspace: Workspace, server_uri: str
):
    name = workspace.name
    first = workspace.register(workspace.train(seed=1)).version
    better = replace(workspace.train(seed=2), metrics={"accuracy": 2.0, "macro_f1": 2.0})
    second = workspace.register(better).version
    env = {"MLFLOW_TRACKING_URI": server_uri}

    rolled = run([str(BIN / "mlcycle"), "rollback"], cwd=workspace.root, **env).stdout
    assert f"champion rolled back from version {second} to version {first}" in rolled
    assert alias_map(name)[CHAMPION] == first
    promoted = run([str(BIN / "mlcycle"), "promote", second], cwd=workspace.root, **env).stdout
    assert f"champion is now version {second} (was {first})" in promoted
    assert alias_map(name)[CHAMPION] == second
    refused = run([str(BIN / "mlcycle"), "promote", "99"], cwd=workspace.root, check=False, **env)
    assert refused.returncode == 1
    assert f"mlcycle: error: '{name}' has no version 99" in refused.stderr

    runs = prefect_flow_runs(workspace.root)
    assert ("rollback-model", "COMPLETED") in runs
    assert ("promote-model", "COMPLETED") in runs
    assert ("promote-model", "FAILED") in runs  # the refused one, on record too


def test_promote_refuses_a_version_that_changes_the_classes_unless_forced(workspace: Workspace):
    name = workspace.name
    first = workspace.register(workspace.train(seed=1)).version
    other = workspace.train(seed=2)
    renamed = replace(other, tags={**other.tags, TAG_CLASS_NAMES: json.dumps(["x", "y", "z"])})
    version = create_version(renamed, name).version
    with pytest.raises(
        RegistryError,
        match=rf"version {version} of '{name}' cannot replace champion v{first} without changing "
        r"what clients get: the champion's classes \[.*\] differ from this model's "
        r"\[\"x\", \"y\", \"z\"\]; `mlcycle promote \d+ --force`",
    ):
        promote(name, version, workspace.params.registry, workspace.processed)
    assert alias_map(name)[CHAMPION] == first
    assert force_promote(name, version, workspace.params.registry, workspace.processed) == first
    assert alias_map(name)[CHAMPION] == version
    assert MlflowClient().get_model_version(name, version).tags[TAG_DECISION] == (
        "promoted by hand (forced)"
    )

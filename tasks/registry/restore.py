"""Restore: bring back the exact data, params.yaml and dvc.lock a version was trained with."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tasks.core.dvc import checkout_quietly, pull_outputs, verified_data_versions
from tasks.core.files import atomic_path
from tasks.core.lineage import LINEAGE_DIR, TAG_RUN, Lineage, git_state
from tasks.core.paths import DVC_LOCK, PARAMS_FILE
from tasks.core.tracking import connect, get_model_version, tracking_errors
from tasks.registry.store import RegistryError, client, parse_version


@dataclass(frozen=True)
class Restored:
    version: str
    hashes: dict[str, str]  # path -> verified DVC hash
    commit: str
    commit_matches: bool


def restore(name: str, version: str, root: Path = Path()) -> Restored:
    """Bring back the data a version was trained on: the run's ``dvc.lock`` and ``params.yaml``,
    then ``dvc pull``; DVC re-hashes the pulled files, and each hash must be the version's."""
    from mlflow.exceptions import MlflowException

    version = parse_version(version)  # before anything is read or written
    connect()
    api = client()
    with tracking_errors(f"read version {version} of '{name}'"):
        tags = get_model_version(name, version).tags
        run_id = tags.get(TAG_RUN)
        if not run_id:
            raise RegistryError(f"version {version} of '{name}' records no MLflow run")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files
        with tempfile.TemporaryDirectory() as scratch:
            try:
                folder = Path(api.download_artifacts(run_id, LINEAGE_DIR, scratch))
            except MlflowException as error:
                raise RegistryError(
                    f"run {run_id} has no {LINEAGE_DIR}/ files ({error.message})"
                ) from None
            lineage = {}
            for file in (DVC_LOCK, PARAMS_FILE):
                source = folder / file.name
                if not source.is_file():
                    raise RegistryError(f"run {run_id} has no {LINEAGE_DIR}/{file.name}")
                lineage[file] = source.read_bytes()
    recorded = Lineage.from_tags(tags)
    expected = recorded.dvc_hashes
    # The workspace's own dvc.lock and params.yaml come back if anything below fails (the data
    # they describe stays in the DVC cache).
    saved = {file: (root / file).read_bytes() for file in lineage if (root / file).is_file()}
    try:
        for file, content in lineage.items():
            with atomic_path(root / file) as tmp:
                tmp.write_bytes(content)
        pull_outputs(root)
        on_disk = verified_data_versions(root)  # dvc.lock's hashes, checked against the files
        actual = {path: on_disk.get(path, "missing") for path in expected}
        wrong = {p: (expected[p], actual[p]) for p in expected if actual[p] != expected[p]}
        if wrong:
            raise RegistryError(
                f"restored data does not match version {version}: "
                + "; ".join(f"{p} is {a}, expected {e}" for p, (e, a) in wrong.items())
            )
    except BaseException:
        for file in lineage:
            if file in saved:
                with atomic_path(root / file) as tmp:
                    tmp.write_bytes(saved[file])
            else:
                (root / file).unlink(missing_ok=True)
        checkout_quietly(root)  # the data back to what the restored dvc.lock says
        raise
    head = Lineage.from_tags(git_state(root)).commit
    return Restored(version, actual, recorded.commit, commit_matches=head == recorded.commit)

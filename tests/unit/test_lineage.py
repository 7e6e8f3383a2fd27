"""Lineage: the one reader and writer of the commit and DVC-hash tags."""

from __future__ import annotations

import pytest

from tasks.core.lineage import (
    TAG_CLASS_NAMES,
    TAG_FLOW_RUN,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_PARAMS,
    Lineage,
    kept_on_run,
)
from tasks.registry.versions import version_tags

RUN_TAGS = {
    TAG_GIT_COMMIT: "c0ffee",
    TAG_GIT_DIRTY: "true",
    "mlcycle.dvc.data/raw": "raw-hash.dir",
    "mlcycle.dvc.data/processed": "processed-hash.dir",
    "mlcycle.evaluated": "true",
}


def test_lineage_reads_the_tags_it_writes():
    lineage = Lineage.from_tags(RUN_TAGS)
    assert lineage.commit == "c0ffee" and lineage.dirty is True
    assert lineage.dvc_hashes == {
        "data/raw": "raw-hash.dir",
        "data/processed": "processed-hash.dir",
    }
    assert lineage.processed == "processed-hash.dir"
    assert lineage.raw == "raw-hash.dir"
    assert lineage.to_tags() == {k: v for k, v in RUN_TAGS.items() if k != "mlcycle.evaluated"}
    assert Lineage.from_tags(lineage.to_tags()) == lineage


@pytest.mark.parametrize(("tag", "dirty"), [("false", False), ("unknown", None)])
def test_the_dirty_flag_round_trips(tag, dirty):
    lineage = Lineage.from_tags({TAG_GIT_COMMIT: "c", TAG_GIT_DIRTY: tag})
    assert lineage.dirty is dirty
    assert lineage.to_tags()[TAG_GIT_DIRTY] == tag


def test_a_run_without_lineage_reads_as_unknown():
    lineage = Lineage.from_tags({})
    assert (lineage.commit, lineage.dirty, lineage.dvc_hashes) == ("unknown", None, {})
    assert lineage.processed is None
    assert lineage.to_tags() == {TAG_GIT_COMMIT: "unknown", TAG_GIT_DIRTY: "unknown"}


def test_a_version_keeps_only_its_own_tags_and_its_run_the_lineage():
    record = {
        "family": "cnn",
        "accuracy": "0.9000",
        **RUN_TAGS,
        TAG_FLOW_RUN: "prefect-flow-run",
        TAG_PARAMS: "{}",
        TAG_CLASS_NAMES: '["0", "1"]',
    }
    assert all(kept_on_run(key) for key in (*Lineage().to_tags(), TAG_FLOW_RUN, TAG_CLASS_NAMES))
    assert list(version_tags(record)) == [
        "family",
        "load_check",
        "decision",
        "accuracy",
        "mlcycle.evaluated",
    ]


def test_a_workspace_lineage_and_its_data_checked_on_disk(tmp_path):
    """A real DVC stage's output: its hash as dvc.lock records it, the same hash re-read from
    the files, and MODIFIED_ON_DISK once a file changes under it."""
    import subprocess
    import sys

    from tasks.core.dvc import MODIFIED_ON_DISK, data_versions, verified_data_versions

    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args, "-q"], cwd=tmp_path, check=True)

    dvc("init", "--no-scm")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  preprocess:\n    cmd: mkdir -p data/processed && echo 1 > data/processed/a\n"
        "    outs: [data/processed]\n"
    )
    dvc("repro")
    recorded = data_versions(tmp_path)
    assert list(recorded) == ["data/processed"] and recorded["data/processed"].endswith(".dir")
    assert verified_data_versions(tmp_path) == recorded
    lineage = Lineage.of_workspace(tmp_path)
    assert (lineage.processed, lineage.commit, lineage.dirty) == (
        recorded["data/processed"],
        "unknown",  # not a git repository
        None,
    )
    (tmp_path / "data" / "processed" / "a").write_text("2\n")
    assert verified_data_versions(tmp_path) == {"data/processed": MODIFIED_ON_DISK}
    assert data_versions(tmp_path) == recorded

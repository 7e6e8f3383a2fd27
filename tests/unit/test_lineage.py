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

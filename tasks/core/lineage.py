"""Lineage: every tag name mlcycle writes on MLflow runs and model versions, and what fills them
(the git commit, DVC's content hashes of the data, the files a run ended with).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tasks.core.dvc import data_versions
from tasks.core.paths import DVC_LOCK, PARAMS_FILE, PROCESSED_DIR, RAW_DIR

LINEAGE_DIR = "lineage"  # run artifacts: the dvc.lock and params.yaml a run ended with

# Run tags (a model version reads the lineage ones through its run: kept_on_run below).
TAG_GIT_COMMIT = "mlcycle.git_commit"
TAG_GIT_DIRTY = "mlcycle.git_dirty"
TAG_DVC_PREFIX = "mlcycle.dvc."
TAG_FLOW_RUN = "mlcycle.prefect_flow_run_id"
TAG_MODEL_MD5 = "mlcycle.model_md5"  # on the run that logged that model file, and its versions
TAG_MODEL_RUN = "mlcycle.model_run_id"  # on runs that use a model logged by another run
TAG_EVALUATED = "mlcycle.evaluated"
# The process that runs a pipeline run: if it dies, the next command in the workspace closes it.
TAG_PID = "mlcycle.pid"
TAG_HOST = "mlcycle.host"
TAG_WORKSPACE = "mlcycle.workspace"
TAG_STOPPED = "mlcycle.stopped"  # why a run was KILLED
TAG_REASON = "mlcycle.reason"  # why the pipeline ran: by hand, its schedule, a drift event
# Why a finished, evaluated run was left unregistered (a lost Prefect API, a dead worker):
# the next `mlcycle run` or `mlcycle register` registers it.
TAG_UNREGISTERED = "mlcycle.unregistered"

# Model version tags a person reads in the MLflow UI. Plain names: its version page lists tags
# by name in a box about five rows high, so these come before every mlcycle.* tag; the test
# scores are tagged under their own names (accuracy, macro_f1: SCORES in tasks/registry/store).
TAG_FAMILY = "family"  # the model family trained (cnn, resnet ...)
TAG_CHECK = "load_check"  # pending | passed | failed
TAG_DECISION = "decision"  # what the promotion gate (or a person) decided

# Model version tags the machinery reads: the run it was registered from, the md5 of its model
# file (its identity: see tasks/registry/check.py) and the champion it replaced.
TAG_RUN = "mlcycle.mlflow_run_id"
TAG_PREVIOUS_CHAMPION = "mlcycle.previous_champion"

# The version's lineage, kept on the run it was registered from (TAG_RUN), where registration
# adds the model's classes and shapes; tasks.core.tracking.get_model_version reads it back
# with the version.
TAG_PARAMS = "mlcycle.params"  # the run's params as JSON (built from the run's params)
TAG_CLASS_NAMES = "mlcycle.class_names"
TAG_INPUT_SHAPE = "mlcycle.input_shape"  # what the network takes (after preprocess)
TAG_RAW_SHAPE = "mlcycle.raw_shape"  # one image as data/raw stores it (what clients send)
MODEL_SPEC_TAGS = (TAG_CLASS_NAMES, TAG_INPUT_SHAPE, TAG_RAW_SHAPE)  # set at registration
UNKNOWN = "unknown"  # a commit or dirty flag that git could not tell


@dataclass(frozen=True)
class Lineage:
    """What a run was made from: the git commit (and whether tracked files differed from it)
    and DVC's content hash of each data output. The one reader and writer of those tags."""

    commit: str = UNKNOWN
    dirty: bool | None = None  # None: git could not tell
    data: tuple[tuple[str, str], ...] = ()  # (DVC output path, content hash), as dvc.lock says

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage:
        """The lineage recorded in a run's (or a model version's) tags; what is missing is
        unknown."""
        return cls(
            commit=tags.get(TAG_GIT_COMMIT, UNKNOWN),
            dirty={"true": True, "false": False}.get(tags.get(TAG_GIT_DIRTY, UNKNOWN)),
            data=tuple(
                (key.removeprefix(TAG_DVC_PREFIX), value)
                for key, value in tags.items()
                if key.startswith(TAG_DVC_PREFIX)
            ),
        )

    @classmethod
    def of_workspace(cls, root: Path = Path()) -> Lineage:
        """The workspace's lineage now: its git state and the hashes ``dvc.lock`` records."""
        return cls.from_tags(git_state(root)).with_data(data_versions(root))

    def with_data(self, hashes: Mapping[str, str]) -> Lineage:
        return Lineage(self.commit, self.dirty, tuple(hashes.items()))

    def to_tags(self) -> dict[str, str]:
        dirty = UNKNOWN if self.dirty is None else str(self.dirty).lower()
        return {
            TAG_GIT_COMMIT: self.commit,
            TAG_GIT_DIRTY: dirty,
            **{f"{TAG_DVC_PREFIX}{path}": md5 for path, md5 in self.data},
        }

    @property
    def dvc_hashes(self) -> dict[str, str]:
        """DVC output path -> content hash."""
        return dict(self.data)

    def data_hash(self, output: Path | str) -> str | None:
        """The recorded hash of one data output (``data/processed``); None if not recorded."""
        return self.dvc_hashes.get(Path(output).as_posix())

    @property
    def processed(self) -> str | None:
        """The hash of ``data/processed``: the split a model was trained and tested on."""
        return self.data_hash(PROCESSED_DIR)

    @property
    def raw(self) -> str | None:
        return self.data_hash(RAW_DIR)

    @staticmethod
    def is_tag(key: str) -> bool:
        """Whether ``key`` is one of the tags a Lineage reads and writes."""
        return key in (TAG_GIT_COMMIT, TAG_GIT_DIRTY) or key.startswith(TAG_DVC_PREFIX)


# The run's tags a version reads as its own (tasks.core.tracking.run_lineage): its Lineage,
# the model's classes and shapes, and the Prefect flow run that made it.
RUN_LINEAGE_TAGS = (*MODEL_SPEC_TAGS, TAG_FLOW_RUN)


def kept_on_run(key: str) -> bool:
    """Whether a version keeps tag ``key`` on the run it was registered from (not itself)."""
    return key in RUN_LINEAGE_TAGS or Lineage.is_tag(key)


def git_state(repo: Path = Path()) -> dict[str, str]:
    """The commit and whether tracked files differ from it (``dvc.lock`` is an output, not code)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")
    except (OSError, subprocess.CalledProcessError):
        return {TAG_GIT_COMMIT: UNKNOWN, TAG_GIT_DIRTY: UNKNOWN}
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: str(bool(changes)).lower()}


def lineage_tags() -> dict[str, str]:
    """The tags of :meth:`Lineage.of_workspace`: what a stage's run records it was made from."""
    return Lineage.of_workspace().to_tags()


def record_lineage_files(
    run_id: str, lock_path: Path = DVC_LOCK, params_path: Path = PARAMS_FILE
) -> None:
    """Attach ``dvc.lock`` and ``params.yaml`` to the run once: what ``mlcycle restore`` reads
    to bring back the run's exact data."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    recorded = {Path(a.path).name for a in client.list_artifacts(run_id, LINEAGE_DIR)}
    for path in (lock_path, params_path):
        if path.name not in recorded and path.is_file():
            client.log_artifact(run_id, str(path), LINEAGE_DIR)

"""The select stage's Optuna study: where it is stored, its name (a digest of everything a
trial's result depends on), creating or joining it, and reading its finished trials.

A re-run with the same inputs continues the same study (after Ctrl-C, or with a larger
``select.max_trials``); several worker processes pointed at one storage run trials of one
study at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna

from tasks.core.config import Params
from tasks.core.errors import MlcycleError
from tasks.core.files import file_md5
from tasks.core.paths import ARTIFACTS_DIR

log = logging.getLogger("mlcycle.select")

# Heartbeats (failing the trials of a worker that died) are "experimental" since Optuna 2.9.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE_FILE = ARTIFACTS_DIR / "selection" / "optuna.db"
HEARTBEAT_S = 10  # a trial whose worker stopped beating for GRACE_S is failed by the next one
GRACE_S = 30
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PARENT_RUN_ATTR = "mlflow_parent_run_id"
# pruning starts once this many trials have finished (Optuna's MedianPruner)
PRUNER_STARTUP_TRIALS = 3


class SelectionError(MlcycleError):
    """The search cannot run or found nothing to choose."""


def storage_url(params: Params) -> str:
    if params.select.storage:
        return params.select.storage
    DEFAULT_STORAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_STORAGE_FILE}"


def shown_url(url: str) -> str:
    """A storage URL fit for logs and reports: without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def study_name(params: Params, train_file: Path, val_file: Path) -> str:
    """A digest of what a trial's result depends on: the space, the per-trial budget, the
    training settings trials share and the data. Budgets that only say how many trials run
    (and where the study is stored) are left out."""
    select = params.select.model_dump(mode="json", exclude={"max_trials", "timeout_s", "storage"})
    # every train.* a trial reads: the families' options, the optimiser, batch size, seed ...
    train = params.train.model_dump(
        mode="json", exclude={"model", "epochs", "early_stopping_patience", "resume"}
    )
    digest = hashlib.sha256(json.dumps({"select": select, "train": train}, sort_keys=True).encode())
    for path in (train_file, val_file):
        digest.update(file_md5(path).encode())
    return f"mlcycle-select-{digest.hexdigest()[:12]}"


def open_study(params: Params, name: str) -> optuna.Study:
    """Study ``name``, created in ``select.storage`` if it is not there yet (the select stage)."""
    with storage_errors(params, name) as storage:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            direction="minimize",  # the best validation loss, as early stopping judges
            sampler=_sampler(params),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=PRUNER_STARTUP_TRIALS,
                n_warmup_steps=params.select.pruning_warmup_epochs,
            ),
            load_if_exists=True,
        )


def load_study(params: Params, name: str) -> optuna.Study:
    """Study ``name`` as the select stage created it; SelectionError if it is not there."""
    with storage_errors(params, name) as storage:
        return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(params))


@contextmanager
def storage_errors(params: Params, name: str) -> Iterator[optuna.storages.RDBStorage]:
    """``select.storage`` opened, and its failures as one SelectionError naming it (its
    password masked)."""
    url = storage_url(params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    try:
        yield optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except KeyError:
        raise SelectionError(
            f"study {name} is not in {shown_url(url)}: start the select stage first (it creates "
            "the study), then the workers"
        ) from None
    except Exception as error:  # SQLAlchemy's connection errors, a bad URL ...
        if isinstance(error, MlcycleError):
            raise
        raise SelectionError(
            f"select.storage {shown_url(url)}: cannot open the Optuna study "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from None


def join_study(params: Params, name: str, wait_s: float) -> optuna.Study:
    """The study the select stage created, waiting for it to appear."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return load_study(params, name)
        except SelectionError:
            if time.monotonic() >= deadline:
                raise
            log.info("select worker: waiting for the select stage to create study %s", name)
            time.sleep(1)


def _sampler(params: Params) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=params.select.seed)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def winning_order(trial: optuna.trial.FrozenTrial) -> tuple[float, float, int]:
    """The winner: the best validation accuracy (what the registry's gate compares, on test),
    then the lower validation loss, then the earlier trial. The sampler and the pruner follow
    the loss, the smoother signal; accuracy alone ties often on a few hundred images."""
    return (-trial.user_attrs["val_accuracy"], trial.value, trial.number)


def wait_for_running(study: optuna.Study, limit_s: float, poll_s: float = 1.0) -> None:
    """Let trials other workers are still running finish (or be failed as stale)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        time.sleep(poll_s)

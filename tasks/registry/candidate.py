"""The candidate: the finished, evaluated pipeline run behind the workspace model, checked
against the data and params in the workspace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import load_params
from tasks.core.dvc import locked_params, verified_data_versions
from tasks.core.files import file_md5, read_json
from tasks.core.lineage import (
    TAG_CLASS_NAMES,
    TAG_EVALUATED,
    TAG_FAMILY,
    TAG_FLOW_RUN,
    TAG_INPUT_SHAPE,
    TAG_MODEL_MD5,
    TAG_MODEL_RUN,
    TAG_PARAMS,
    TAG_RAW_SHAPE,
    TAG_RUN,
    TAG_UNREGISTERED,
    Lineage,
)
from tasks.core.model_file import load_model
from tasks.core.model_spec import ModelSpec
from tasks.core.paths import MODEL_FILE, PARAMS_FILE, RAW_DIR
from tasks.core.tracking import as_logged, connect, tracking_errors
from tasks.registry.store import SCORES, RegistryError, client

SHOWN_KEYS = 3  # params a refusal names


@dataclass(frozen=True)
class Candidate:
    """An evaluated pipeline run and the model it evaluated, ready to register."""

    run_id: str
    model_run_id: str  # the run that logged the model (the same run unless DVC reused it)
    model_id: str  # MLflow logged model, loadable as models:/<model_id>
    model_md5: str
    metrics: dict[str, float]  # accuracy and macro_f1 on the test split
    # what its model version records: its own tags and the lineage its run keeps (the tags
    # tasks.core.tracking.get_model_version gives back), as registration splits them
    tags: dict[str, str]
    unregistered: str | None = None  # why the run was left unregistered (a lost command)


def find_candidate(
    run_id: str | None = None,
    model_file: Path = MODEL_FILE,
    root: Path = Path(),
    raw_dir: Path = RAW_DIR,
) -> Candidate:
    """The finished, evaluated run whose model is ``model_file`` (newest, unless ``run_id``).

    Refuses a run that failed, is still running or was never evaluated, and a workspace (the
    DVC repository at ``root``) whose data or params differ from what the run was evaluated
    with: the gate scores on that test split, and restore writes those params back.
    """
    if not model_file.is_file():
        raise RegistryError(f"{model_file}: not found; run the pipeline (`mlcycle run`) first")
    experiment_id = connect()
    model_md5 = file_md5(model_file)
    with tracking_errors("find the run to register"):
        run = (
            client().get_run(run_id)
            if run_id
            else _newest_run(experiment_id, model_file, model_md5)
        )
        _refuse_unevaluated(run)
        model_run_id = _model_run_id(run, model_file, model_md5)
        model_id = _logged_model_id(experiment_id, model_run_id)
    tags = run.data.tags
    lineage = Lineage.from_tags(tags)
    _check_data(run, lineage, root)
    _check_params(run, root / PARAMS_FILE)
    _check_lock_params(run, root)
    metrics = _test_scores(run)
    _, saved = load_model(model_file)
    spec = saved.spec
    record = {
        # the version's own tags (create_version), in the order the MLflow UI lists them
        TAG_FAMILY: spec.model,
        **{name: f"{value:.4f}" for name, value in metrics.items()},
        TAG_RUN: run.info.run_id,
        TAG_MODEL_MD5: model_md5,
        # lineage: kept on the run (create_version adds the model's classes and shapes there)
        **lineage.to_tags(),
        TAG_FLOW_RUN: tags.get(TAG_FLOW_RUN, "none"),
        TAG_PARAMS: json.dumps(dict(sorted(run.data.params.items()))),
        TAG_CLASS_NAMES: json.dumps(list(spec.class_names)),
        TAG_INPUT_SHAPE: json.dumps(list(spec.input_shape)),
        TAG_RAW_SHAPE: json.dumps(_raw_shape(raw_dir, spec)),
    }
    return Candidate(
        run.info.run_id,
        model_run_id,
        model_id,
        model_md5,
        metrics,
        record,
        tags.get(TAG_UNREGISTERED),
    )


def _refuse_unevaluated(run: Any) -> None:
    """Only a finished run that evaluated its model is registered."""
    evaluated = run.data.tags.get(TAG_EVALUATED) == "true"
    if run.info.status != "FINISHED" or not evaluated:
        raise RegistryError(
            f"run {run.info.run_id} is {run.info.status}"
            f"{'' if evaluated else ', not evaluated'}: only finished, evaluated runs are "
            "registered"
        )


def _model_run_id(run: Any, model_file: Path, model_md5: str) -> str:
    """The run that logged the model ``run`` evaluated (itself unless DVC reused the model),
    as long as that model is the one in ``model_file``."""
    tags = run.data.tags
    model_run_id = tags.get(TAG_MODEL_RUN) or run.info.run_id
    model_tags = (
        tags if model_run_id == run.info.run_id else client().get_run(model_run_id).data.tags
    )
    if model_tags.get(TAG_MODEL_MD5) != model_md5:
        raise RegistryError(
            f"run {run.info.run_id} evaluated a model with md5 "
            f"{model_tags.get(TAG_MODEL_MD5)}, but {model_file} has md5 {model_md5}; "
            "`dvc checkout` the run's outputs first"
        )
    return model_run_id


def _check_data(run: Any, lineage: Lineage, root: Path) -> None:
    """The workspace's data must be what the run was evaluated on: its ``dvc.lock``, and the
    files themselves (the gate scores the split on disk)."""
    recorded = lineage.dvc_hashes
    workspace = verified_data_versions(root) if recorded else {}
    for path, md5 in recorded.items():
        if workspace.get(path) != md5:
            raise RegistryError(
                f"{path} in this workspace ({workspace.get(path, 'missing')}) is not the data run "
                f"{run.info.run_id} was evaluated on ({md5}); `dvc checkout` or re-run the pipeline"
            )


def _test_scores(run: Any) -> dict[str, float]:
    try:
        return {name: float(run.data.metrics[f"test_{name}"]) for name in SCORES}
    except KeyError as missing:
        raise RegistryError(f"run {run.info.run_id} has no {missing.args[0]} metric") from None


def _check_params(run: Any, params_path: Path) -> None:
    """params.yaml must hold the params the run trained with: restore writes it back. The
    registry and serve sections may differ (they steer later steps, not the model), and so
    may the options of model families the run did not train."""
    if not params_path.is_file():
        return
    params = load_params(params_path)
    inert = ("registry.", "serve.", *params.inert_prefixes())
    logged = run.data.params
    current = {k: as_logged(v) for k, v in params.flat().items()}
    differ = sorted(
        key
        for key, value in current.items()
        if key in logged and logged[key] != value and not key.startswith(inert)
    )
    if differ:
        shown = _first_few([f"{k} {logged[k]} -> {current[k]}" for k in differ])
        raise RegistryError(
            f"{params_path} differs from the params run {run.info.run_id} trained with "
            f"({shown}); `git checkout {params_path}` or re-run"
        )


def _same(logged: str, locked: Any) -> bool:
    """A logged param (text) against dvc.lock's value: ``600.0`` (a float field) is ``600``."""
    if logged == as_logged(locked):
        return True
    if isinstance(locked, int | float) and not isinstance(locked, bool):
        try:
            return float(logged) == float(locked)
        except ValueError:
            return False
    return False


def _check_lock_params(run: Any, root: Path) -> None:
    """The run must have recorded the params its model was trained with, as dvc.lock says: a
    run whose workspace another run rewrote under it (different seeds, say) is refused."""
    logged = run.data.params
    locked = locked_params(root)
    differ = sorted(k for k, v in locked.items() if k in logged and not _same(logged[k], v))
    if differ:
        shown = _first_few([f"{k} {logged[k]} (run) vs {locked[k]} (dvc.lock)" for k in differ])
        raise RegistryError(
            f"run {run.info.run_id} recorded other params than the stages in dvc.lock ran with "
            f"({shown}): its model is not what it says; re-run the pipeline"
        )


def _first_few(items: list[str]) -> str:
    """The first SHOWN_KEYS items, and " ..." when there are more."""
    return ", ".join(items[:SHOWN_KEYS]) + (" ..." if len(items) > SHOWN_KEYS else "")


def _raw_shape(raw_dir: Path, spec: ModelSpec) -> list[int]:
    """One raw image's shape; without ``data/raw`` (a bare workspace), the model's input's."""
    meta = raw_dir / "meta.json"
    if meta.is_file():
        return list(read_json(meta)["image_shape"])
    return list(spec.input_shape)


def _newest_run(experiment_id: str, model_file: Path, model_md5: str) -> Any:
    """The newest finished run that evaluated the model in ``model_file`` (``model_md5``)."""
    run = _newest_evaluated_run(experiment_id, model_md5)
    if run is None:
        raise RegistryError(
            f"no finished, evaluated MLflow run has the model in {model_file} "
            f"(md5 {model_md5}); run `mlcycle run` or `dvc repro` with tracking first"
        )
    return run


def _newest_evaluated_run(experiment_id: str, model_md5: str) -> Any:
    api = client()
    finished = f"attributes.status = 'FINISHED' and tags.`{TAG_EVALUATED}` = 'true'"
    newest = ["attributes.start_time DESC"]
    own = api.search_runs(
        [experiment_id], f"{finished} and tags.`{TAG_MODEL_MD5}` = '{model_md5}'", order_by=newest
    )
    loggers = api.search_runs(
        [experiment_id], f"tags.`{TAG_MODEL_MD5}` = '{model_md5}'", order_by=newest
    )
    reusing = [
        run
        for logger in loggers
        for run in api.search_runs(
            [experiment_id],
            f"{finished} and tags.`{TAG_MODEL_RUN}` = '{logger.info.run_id}'",
            order_by=newest,
        )
    ]
    runs = sorted([*own, *reusing], key=lambda run: run.info.start_time, reverse=True)
    return runs[0] if runs else None


def _logged_model_id(experiment_id: str, model_run_id: str) -> str:
    models = client().search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{model_run_id}'"
    )
    if not models:
        raise RegistryError(f"run {model_run_id} logged no model to MLflow")
    return max(models, key=lambda model: model.creation_timestamp).model_id

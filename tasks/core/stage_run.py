"""Which MLflow run a stage's process records into: the one place that decides it.

Under the flow, ``MLFLOW_RUN_ID`` names the pipeline's run and every stage records into it
(the flow ends it). A stage run by a plain ``dvc repro`` has no flow: what it records into then
is its :class:`WithoutFlow` rule. The stages themselves never see a run: they write files, and
their mains log those files into the run this module opens (``record_<stage>``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from tasks.core.config import Params
from tasks.core.files import file_md5
from tasks.core.lineage import TAG_EVALUATED, TAG_FLOW_RUN, TAG_MODEL_MD5, TAG_MODEL_RUN
from tasks.core.paths import MODEL_FILE
from tasks.core.tracking import RunTracker, as_logged, connect, flow_mlflow_run_id, tracked_run


class WithoutFlow(Enum):
    """What a stage records into when no flow runs it."""

    # The data stages: nothing; the train stage records their reports in the run it opens.
    NOTHING = "nothing"
    # train and select: a run of their own, named after the stage.
    OWN_RUN = "own run"
    # evaluate: the run that trained the model file it scores, when that run may be joined
    # (:func:`can_join`); otherwise a run of its own that names it (``TAG_MODEL_RUN``).
    MODEL_RUN = "model run"


@contextmanager
def stage_run(
    params: Params, name: str, without_flow: WithoutFlow, model_file: Path = MODEL_FILE
) -> Iterator[RunTracker | None]:
    """The run stage ``name`` records into (None: it records nothing), opened with ``params``
    and the lineage logged; a run this opened is ended when the block ends (FAILED if it
    raises), the flow's is left to the flow."""
    if flow_mlflow_run_id() is not None:
        with tracked_run(params) as tracker:
            yield tracker
        return
    if without_flow is WithoutFlow.NOTHING:
        yield None
        return
    model_run_id = None
    if without_flow is WithoutFlow.MODEL_RUN and model_file.is_file():
        model_run_id = find_run(TAG_MODEL_MD5, file_md5(model_file))
    joined = model_run_id if model_run_id and can_join(model_run_id, params) else None
    with tracked_run(params, run_id=joined, run_name=name) as tracker:
        if model_run_id and joined is None:
            tracker.set_tags({TAG_MODEL_RUN: model_run_id})
        yield tracker


def find_run(tag: str, value: str) -> str | None:
    """The newest run of the experiment carrying ``tag=value``."""
    from mlflow.tracking import MlflowClient

    experiment_id = connect()
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def can_join(run_id: str, params: Params) -> bool:
    """Whether a stage run on its own may log into this run: one that a plain ``dvc repro``
    opened (not a flow's), not failed, not evaluated yet, and logged with the same params."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    return (
        run.info.status != "FAILED"
        and TAG_FLOW_RUN not in run.data.tags
        and TAG_EVALUATED not in run.data.tags
        and not params_conflict(run_id, params)
    )


def params_conflict(run_id: str, params: Params) -> list[str]:
    """Keys this run logged with a different value than ``params`` holds."""
    from mlflow.tracking import MlflowClient

    logged = MlflowClient().get_run(run_id).data.params
    return [k for k, v in params.flat().items() if k in logged and logged[k] != as_logged(v)]

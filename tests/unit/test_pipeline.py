import shutil

import pytest

from tasks.core.config import ConfigError, apply_params, load_params
from tasks.lifecycle import pipeline
from tasks.lifecycle.pipeline import PipelineSummary, StageResult, summary_markdown
from tests.helpers import REPO_ROOT


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


@pytest.fixture
def published(monkeypatch) -> list[str]:
    """The stages after which a data-validation artifact is published, in a faked flow run
    whose stages are skipped (or fail, when named in ``failing``)."""
    calls: list[str] = []
    monkeypatch.setattr(pipeline.flow_run, "get_id", lambda: "a-flow-run")
    monkeypatch.setitem(pipeline.STAGE_PUBLISHERS, "preprocess", lambda: calls.append("report"))
    monkeypatch.setitem(pipeline.FAILURE_PUBLISHERS, "validate", lambda: calls.append("report"))
    return calls


def run_stages(monkeypatch, failing: str | None = None) -> None:
    def reproduce(stage: str, run_id: str | None) -> StageResult:
        if stage == failing:
            raise RuntimeError(f"{stage} failed")
        return StageResult(stage, ran=False, seconds=0.0)

    monkeypatch.setattr(pipeline, "_reproduce", reproduce)
    for stage in ("collect", "validate", "preprocess"):
        pipeline.reproduce_stage(stage)


def test_skipped_validation_stages_publish_one_data_validation_artifact(monkeypatch, published):
    run_stages(monkeypatch)
    assert published == ["report"]


@pytest.mark.parametrize("failing", ["validate", "preprocess"])
def test_a_failed_validation_stage_publishes_its_artifact_once(monkeypatch, published, failing):
    with pytest.raises(RuntimeError, match=f"{failing} failed"):
        run_stages(monkeypatch, failing)
    assert published == ["report"]


@pytest.fixture
def evaluated(tiny_params, processed_dir, tmp_path):
    """A model file and its evaluation reports, made by the real stages (untracked)."""
    from tasks.stages.evaluate import run_evaluate
    from tasks.stages.train import run_train

    run_train(
        tiny_params.train,
        processed_dir,
        tmp_path / "model.pt",
        tmp_path / "ckpt",
        tmp_path / "reports",
    )
    run_evaluate(tiny_params.evaluate, tmp_path / "model.pt", processed_dir, tmp_path / "reports")
    return tmp_path / "model.pt", processed_dir, tmp_path / "reports"


def test_run_record_links_a_reused_model_and_copies_its_evaluation(
    tracking_store, tiny_params, evaluated
):
    import json

    from mlflow.tracking import MlflowClient

    from tasks.core.files import file_md5
    from tasks.core.lineage import TAG_EVALUATED, TAG_MODEL_MD5, TAG_MODEL_RUN
    from tasks.core.tracking import tracked_run
    from tasks.lifecycle.pipeline import complete_run_record

    model_file, processed_dir, reports_dir = evaluated
    with tracked_run(tiny_params, run_name="trained it") as trainer:
        trainer.set_tags({TAG_MODEL_MD5: file_md5(model_file), TAG_EVALUATED: "true"})
    with tracked_run(tiny_params, run_name="reused it") as reuser:
        pass
    complete_run_record(reuser.run_id, model_file, processed_dir, reports_dir)
    client = MlflowClient()
    reused = client.get_run(reuser.run_id).data
    metrics = json.loads((reports_dir / "metrics.json").read_text())
    assert reused.tags[TAG_MODEL_RUN] == trainer.run_id
    assert reused.metrics["test_accuracy"] == metrics["accuracy"]
    assert reused.metrics["baseline_accuracy"] == metrics["baseline"]["accuracy"]
    logged = {a.path for a in client.list_artifacts(reuser.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in logged

    # A run that trained and evaluated itself is left as it is.
    complete_run_record(trainer.run_id, model_file, processed_dir, reports_dir)
    own = client.get_run(trainer.run_id).data
    assert TAG_MODEL_RUN not in own.tags and "test_accuracy" not in own.metrics


def test_run_record_logs_the_model_when_no_run_holds_it(tracking_store, tiny_params, evaluated):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.core.files import file_md5
    from tasks.core.lineage import TAG_MODEL_MD5, TAG_MODEL_RUN
    from tasks.core.tracking import tracked_run
    from tasks.lifecycle.pipeline import complete_run_record

    model_file, processed_dir, reports_dir = evaluated
    with tracked_run(tiny_params, run_name="fresh tracking store") as run:
        pass
    complete_run_record(run.run_id, model_file, processed_dir, reports_dir)
    tags = MlflowClient().get_run(run.run_id).data.tags
    assert tags[TAG_MODEL_MD5] == file_md5(model_file) and TAG_MODEL_RUN not in tags
    models = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run.run_id}'", output_format="list"
    )
    assert len(models) == 1


@pytest.mark.parametrize(
    ("state", "status"),
    [
        pytest.param("failed", "FAILED", id="a-step-failed"),
        pytest.param("crashed", "KILLED", id="stopped-by-a-signal"),
    ],
)
def test_failure_hook_marks_the_flow_runs_mlflow_run(tracking_store, tiny_params, state, status):
    import types

    from mlflow.tracking import MlflowClient
    from prefect.states import Crashed, Failed

    from tasks.core.lineage import TAG_FLOW_RUN, TAG_STOPPED
    from tasks.core.tracking import connect
    from tasks.lifecycle.pipeline import fail_pipeline_run

    run = MlflowClient().create_run(connect(), tags={TAG_FLOW_RUN: "1234"})
    ended = Failed() if state == "failed" else Crashed(message="aborted by an interrupt")
    fail_pipeline_run(None, types.SimpleNamespace(id="1234"), ended)
    logged = MlflowClient().get_run(run.info.run_id)
    assert logged.info.status == status
    assert (TAG_STOPPED in logged.data.tags) == (status == "KILLED")


def test_failure_hook_leaves_a_finished_run_finished(tracking_store, tiny_params):
    """Training and evaluation completed; a later step (registration) failing does not unmake
    them, and `mlcycle register` may retry."""
    import types

    from mlflow.tracking import MlflowClient
    from prefect.states import Failed

    from tasks.core.lineage import TAG_FLOW_RUN
    from tasks.core.tracking import tracked_run
    from tasks.lifecycle.pipeline import fail_pipeline_run

    with tracked_run(tiny_params) as run:
        run.set_tags({TAG_FLOW_RUN: "5678"})
    fail_pipeline_run(None, types.SimpleNamespace(id="5678"), Failed())
    assert MlflowClient().get_run(run.run_id).info.status == "FINISHED"


def test_a_registration_report_that_cannot_be_published_is_a_warning(monkeypatch, caplog):
    # the version is registered by then: losing the Prefect API must not fail the run
    import prefect.artifacts

    from tasks.core.config import load_params
    from tasks.registry.gate import Registration
    from tasks.registry.tasks import publish_registration

    def lost(**_: object) -> None:
        raise ConnectionError("the Prefect API is gone")

    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lost)
    metrics = {"accuracy": 0.98, "macro_f1": 0.97}
    registration = Registration("m", "2", True, "better", "2", metrics, None)
    publish_registration(registration, load_params(REPO_ROOT / "params.yaml").registry)
    assert "could not publish the model-registration report: the Prefect API is gone" in (
        caplog.text
    )

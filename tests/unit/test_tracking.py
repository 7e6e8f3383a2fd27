import http.server
import json
import subprocess
import threading
import time

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from tasks.core.dvc import data_versions
from tasks.core.files import file_md5, try_lock, unlock
from tasks.core.lineage import (
    TAG_CLASS_NAMES,
    TAG_DVC_PREFIX,
    TAG_EVALUATED,
    TAG_FLOW_RUN,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_MODEL_MD5,
    TAG_PARAMS,
    TAG_RUN,
    git_state,
)
from tasks.core.stage_run import can_join
from tasks.core.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    TrackingError,
    check_server,
    connect,
    get_model_version,
    one_store_creator,
    tracked_run,
)
from tasks.stages.train import epoch_logger, record_training, run_train
from tests.helpers import free_port


def test_unreachable_server_fails_within_seconds(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"cannot be reached.*unset MLFLOW_TRACKING_URI"):
        connect()
    assert time.monotonic() - started < 10


def test_server_answering_errors_is_reported():
    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(503)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError, match="HTTP 503"):
            check_server(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


def test_the_experiment_opens_in_the_ui_as_model_training(tracking_store):
    """Without mlflow.experimentKind, the MLflow UI (3.17) opens an experiment in its GenAI
    view, an empty traces overview; a kind set by someone (in the UI) is kept."""
    experiment = MlflowClient().get_experiment(connect())
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    MlflowClient().delete_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG)
    connect()  # an experiment made by an earlier mlcycle gets the tag
    assert MlflowClient().get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == (
        MODEL_TRAINING_KIND
    )
    MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, "genai")
    connect()
    assert MlflowClient().get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG] == (
        "genai"
    )


def test_a_version_reads_its_lineage_from_its_run(tracking_store, tiny_params):
    """Versions keep a few short tags; params, classes, shapes and data hashes stay on the run
    they were registered from, and read back with the version."""
    with tracked_run(tiny_params, run_name="registered") as tracker:
        tracker.set_tags({TAG_CLASS_NAMES: '["a", "b"]', f"{TAG_DVC_PREFIX}data/raw": "d1.dir"})
    client = MlflowClient()
    client.create_registered_model("m")
    new = client.create_model_version("m", "s", tags={TAG_RUN: tracker.run_id, "family": "cnn"})
    record = get_model_version("m", str(new.version)).tags
    assert record["family"] == "cnn"
    assert record[TAG_CLASS_NAMES] == '["a", "b"]'
    assert record[f"{TAG_DVC_PREFIX}data/raw"] == "d1.dir"
    assert json.loads(record[TAG_PARAMS])["train.epochs"] == "2"
    assert record[TAG_GIT_COMMIT] == client.get_run(tracker.run_id).data.tags[TAG_GIT_COMMIT]
    assert TAG_PARAMS not in client.get_model_version("m", str(new.version)).tags  # not stored
    gone = client.create_model_version("m", "s", tags={TAG_RUN: "0" * 32})
    with pytest.raises(TrackingError, match=f"keeps its lineage .* on MLflow run {'0' * 32}"):
        get_model_version("m", str(gone.version))


def test_tracked_run_records_params_lineage_and_failure(tracking_store, tiny_params, tmp_path):
    with tracked_run(tiny_params, run_name="ok") as tracker:
        tracker.log_metrics({"val_loss": 0.5}, step=1)
    run = MlflowClient().get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["train.cnn.channels"] == "[8, 16]"
    assert TAG_GIT_COMMIT in run.data.tags
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())

    with pytest.raises(RuntimeError), tracked_run(tiny_params, run_name="broken") as tracker:
        raise RuntimeError("stage crashed")
    assert MlflowClient().get_run(tracker.run_id).info.status == "FAILED"


def test_training_logs_each_epoch_and_a_loadable_model(
    tracking_store, tiny_params, processed_dir, tmp_path
):
    params = tiny_params.train.model_copy(update={"epochs": 3, "early_stopping_patience": None})
    with tracked_run(tiny_params) as tracker:
        run_train(
            params,
            processed_dir,
            tmp_path / "model.pt",
            tmp_path / "ckpt",
            tmp_path / "reports",
            on_epoch=epoch_logger(tracker),
        )
        record_training(tracker, tmp_path / "model.pt", processed_dir)
    client = MlflowClient()
    history = client.get_metric_history(tracker.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    run = client.get_run(tracker.run_id)
    assert run.data.tags[TAG_MODEL_MD5] == file_md5(tmp_path / "model.pt")
    model_uri = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )[0].model_uri
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    import numpy as np

    from tasks.core.files import read_split
    from tasks.core.model_file import load_model, predict_logits

    test, _ = read_split(processed_dir, "test")
    local = predict_logits(load_model(tmp_path / "model.pt")[0], torch.from_numpy(test.images))
    # the canonical uint8 pixels, through MLflow's own predict
    assert np.allclose(pyfunc.predict(test.images), local.numpy(), atol=1e-5)
    # the signature the MLflow UI shows ("Inputs (1)"), which MLflow enforces
    (images,) = pyfunc.metadata.get_input_schema().inputs
    assert (images.type, images.shape) == (np.dtype(np.uint8), (-1, 8, 8, 1))
    (scores,) = pyfunc.metadata.get_output_schema().inputs
    assert (scores.type, scores.shape) == (np.dtype(np.float32), (-1, 3))
    with pytest.raises(Exception, match=r"does not match expected shape \(-1, 8, 8, 1\)"):
        pyfunc.predict(np.zeros((2, 28, 28, 1), np.uint8))
    with pytest.raises(Exception, match="dtype of input float32 does not match expected dtype"):
        pyfunc.predict(test.images.astype(np.float32))


def test_a_stage_leaves_the_flows_run_open_and_reopens_a_finished_one(
    tracking_store, tiny_params, monkeypatch
):
    client = MlflowClient()
    with tracked_run(tiny_params) as flows_run:
        pass
    client.update_run(flows_run.run_id, status="RUNNING")  # as the flow holds it
    monkeypatch.setenv("MLFLOW_RUN_ID", flows_run.run_id)
    with tracked_run(tiny_params) as stage:
        assert stage.run_id == flows_run.run_id
    assert client.get_run(flows_run.run_id).info.status == "RUNNING"  # the flow ends it
    with pytest.raises(ValueError), tracked_run(tiny_params):
        raise ValueError("stage failed")
    # the flow ends it, FAILED or KILLED, by how the flow ended (its hook; test_pipeline.py)
    assert client.get_run(flows_run.run_id).info.status == "RUNNING"

    monkeypatch.delenv("MLFLOW_RUN_ID")
    with tracked_run(tiny_params) as train_stage:
        pass
    with tracked_run(tiny_params, run_id=train_stage.run_id) as evaluate_stage:
        assert client.get_run(evaluate_stage.run_id).info.status == "RUNNING"
    assert client.get_run(train_stage.run_id).info.status == "FINISHED"


def test_unknown_run_id_is_a_clear_error(tracking_store, tiny_params):
    with (
        pytest.raises(TrackingError, match="cannot open MLflow run 0123"),
        tracked_run(tiny_params, run_id="0123"),
    ):
        pass


def test_evaluation_joins_only_an_open_plain_unevaluated_run_with_the_same_params(
    tracking_store, tiny_params
):
    def run_with(tags=(), fail=False, params=tiny_params):
        try:
            with tracked_run(params) as run:
                run.set_tags(dict(tags))
                if fail:
                    raise RuntimeError
        except RuntimeError:
            pass
        return run.run_id

    assert can_join(run_with(), tiny_params)
    assert not can_join(run_with(fail=True), tiny_params)
    assert not can_join(run_with({TAG_FLOW_RUN: "x"}), tiny_params)
    assert not can_join(run_with({TAG_EVALUATED: "true"}), tiny_params)
    other = tiny_params.model_copy(
        update={"evaluate": tiny_params.evaluate.model_copy(update={"baseline": "none"})}
    )
    assert not can_join(run_with(params=other), tiny_params)


def test_data_versions_come_from_dvc_lock(tmp_path):
    """DVC's own reading of dvc.lock (through its Python API): only the data outputs."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  collect:\n    cmd: x\n    outs: [data/raw]\n"
        "  preprocess:\n    cmd: y\n    outs: [data/processed]\n"
        "  train:\n    cmd: z\n    outs: [artifacts/model.pt]\n"
    )
    raw, processed = "0a1b2c3d4e5f60718293a4b5c6d7e8f9.dir", "1a1b2c3d4e5f60718293a4b5c6d7e8f9.dir"
    outs = {"collect": ("x", "data/raw", raw), "preprocess": ("y", "data/processed", processed)}
    outs["train"] = ("z", "artifacts/model.pt", "2a1b2c3d4e5f60718293a4b5c6d7e8f9")
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n"
        + "".join(
            f"  {stage}:\n    cmd: {cmd}\n    outs:\n    - path: {path}\n      hash: md5\n"
            f"      md5: {md5}\n"
            for stage, (cmd, path, md5) in outs.items()
        )
    )
    assert data_versions(tmp_path) == {"data/raw": raw, "data/processed": processed}
    assert data_versions(tmp_path / "absent") == {}


def test_git_state_flags_changed_code_but_not_dvc_lock(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("a\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    assert git_state(tmp_path)[TAG_GIT_DIRTY] == "false"
    (tmp_path / "dvc.lock").write_text("b\n")
    assert git_state(tmp_path)[TAG_GIT_DIRTY] == "false"
    (tmp_path / "code.py").write_text("x = 2\n")
    state = git_state(tmp_path)
    assert state[TAG_GIT_DIRTY] == "true" and len(state[TAG_GIT_COMMIT]) == 40


def test_git_state_outside_a_repository_is_unknown(tmp_path):
    assert git_state(tmp_path) == {TAG_GIT_COMMIT: "unknown", TAG_GIT_DIRTY: "unknown"}


def test_a_version_logged_as_an_mlflow_pytorch_program_is_refused_by_serving(
    tracking_store, tiny_params, processed_dir, tmp_path
):
    """mlcycle logged `mlflow.pytorch` programs (pt2) before its pyfunc model; nothing reads
    them any more: serving refuses such a version in one line naming it (the old app keeps
    serving), as the registry's gate and load-back check do."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import infer_signature

    from tasks.core.files import read_split
    from tasks.core.model_file import load_model
    from tasks.serving.model import NoModelError, load_served_model

    with tracked_run(tiny_params) as tracker:
        run_train(
            tiny_params.train,
            processed_dir,
            tmp_path / "model.pt",
            tmp_path / "ckpt",
            tmp_path / "reports",
        )
    model, _ = load_model(tmp_path / "model.pt")
    test, _ = read_split(processed_dir, "test")
    example = test.images[:5].astype(np.float32)
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    mlflow.pytorch.log_model(
        model,
        name="model",
        run_id=tracker.run_id,
        signature=signature,
        input_example=example,
        pip_requirements=["torch"],
    )
    logged = mlflow.search_logged_models(output_format="list")[0]
    MlflowClient().create_registered_model("old")
    tags = {
        "mlcycle.class_names": '["class_0", "class_1", "class_2"]',
        "mlcycle.input_shape": "[8, 8, 1]",
        "mlcycle.params": "{}",
    }
    version = MlflowClient().create_model_version(
        "old", source=logged.model_uri, run_id=tracker.run_id, model_id=logged.model_id, tags=tags
    )
    with pytest.raises(NoModelError, match=f"version {version.version} of 'old' cannot be served"):
        load_served_model("old", "champion", str(version.version))


def test_a_new_sqlite_store_is_created_by_one_process_at_a_time(tmp_path):
    """The lock beside the store's file (a URI's query left out) is held for the block; another
    holder is kept out, and a server URI takes no lock."""
    lock = tmp_path / ".mlflow.db.create-lock"
    with (
        one_store_creator(f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=20"),
        lock.open("a") as other,
    ):
        assert not try_lock(other)
    with lock.open("a") as other:
        assert try_lock(other)
        unlock(other)
    with one_store_creator("http://127.0.0.1:5000"):
        assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]

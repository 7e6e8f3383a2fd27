"""The trained-model file: save it atomically, load it back, run it, log it to MLflow.

``artifacts/model.pt`` holds the weights and everything needed to rebuild the network (model
name and options, input shape, class names, normalisation statistics), so loading it never
depends on ``params.yaml``. Shared by train, evaluate and the pipeline's bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models import Classifier
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset, atomic_path, file_md5
from tasks.core.lineage import TAG_MODEL_MD5
from tasks.core.model_spec import ModelSpec, classifier_from_bundle

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

FORMAT_VERSION = 1


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` onto ``path`` atomically, with bytes that depend on ``obj`` only."""
    # Through a file handle: torch names the archive after a *path*, which would make the bytes
    # (and DVC's hash) depend on the temporary file's random name.
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)


@dataclass(frozen=True)
class SavedModel:
    """What a model file says besides its weights: the spec and how the training went."""

    spec: ModelSpec
    best_epoch: int  # whose weights the file holds
    epochs_run: int


def save_model(path: Path, model: nn.Module, saved: SavedModel) -> None:
    # The keys and their order are the file's format: its bytes (and DVC's hash) depend on them.
    torch_save(
        {
            "format": FORMAT_VERSION,
            **saved.spec.to_bundle(),
            "best_epoch": saved.best_epoch,
            "epochs_run": saved.epochs_run,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )


def load_model(path: Path) -> tuple[Classifier, SavedModel]:
    """Rebuild a trained model from its file; returns it in eval mode, on CPU, and its record."""
    if not path.is_file():
        raise MlcycleError(f"{path}: not found; run the train stage first")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
        model = classifier_from_bundle(bundle)
        saved = SavedModel(
            ModelSpec.from_bundle(bundle), int(bundle["best_epoch"]), int(bundle["epochs_run"])
        )
    except Exception as error:  # torch raises anything from struct.error to UnpicklingError
        raise MlcycleError(
            f"{path}: not a model written by the train stage ({type(error).__name__}: {error})"
        ) from None
    return model, saved


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits in batches on the model's device, wherever ``images`` are (data streamed from
    host memory is copied in batch by batch).

    Written into one tensor made at the first batch, not kept per batch and joined: small
    results kept alive between each batch's large temporaries fragment the CPU heap, which then
    grows with every batch (measured: 7 GB over 150,000 validation images of the CNN)."""
    model.eval()
    device = next(model.parameters()).device
    logits: torch.Tensor | None = None
    for start in range(0, len(images), batch_size):
        batch = model(images[start : start + batch_size].to(device, non_blocking=True))
        if logits is None:
            logits = batch.new_empty((len(images), *batch.shape[1:]))
        logits[start : start + len(batch)] = batch
    if logits is None:
        raise ValueError("no images to predict")
    return logits


PYFUNC_ENTRY = Path(__file__).with_name("pyfunc_classifier.py")


def log_model(run_id: str, model_path: Path, examples: ImageDataset) -> None:
    """Log the model file to an MLflow run as a pyfunc model (``tasks/core/pyfunc_classifier.py``)
    with its signature (uint8 images in, a score per class out) and an input example; tag the
    run with the file's hash."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    import models
    from tasks.core import model_spec

    # A logged model lands in the active experiment, which must be the run's own.
    mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
    # Model.log (what pyfunc.log_model calls) takes the run to log into: the flow's run stays
    # open, where `with mlflow.start_run(run_id)` would end it.
    Model.log(
        artifact_path=None,
        name="model",
        flavor=mlflow.pyfunc,
        run_id=run_id,
        python_model=str(PYFUNC_ENTRY),
        artifacts={"model_file": str(model_path)},
        # What the MLflow UI shows under Schema, and MLflow enforces: uint8 images (N, H, W, C)
        # as the processed splits hold them: the network's input.
        signature=classifier_signature(
            examples.images.shape[1:], examples.images.dtype, len(examples.class_names)
        ),
        input_example=examples.images[:5],
        # models/ and the spec's reader, which the model's code imports (as `model_spec`)
        code_paths=[str(Path(models.__file__).parent), model_spec.__file__],
        # Naming them skips MLflow's slow requirement inference (it re-imports the model).
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
    )
    MlflowClient().set_tag(run_id, TAG_MODEL_MD5, file_md5(model_path))


def model_file_problem(model_dir: Path, recorded_md5: str | None) -> str | None:
    """Why the downloaded model's weights file is not the one the version recorded; None when
    it is, or when there is nothing to compare (a version from another tool records no md5)."""
    from mlflow.models import Model

    artifacts = Model.load(str(model_dir)).flavors.get("python_function", {}).get("artifacts", {})
    relative = artifacts.get("model_file", {}).get("path")
    if recorded_md5 is None or relative is None:
        return None
    model_file = model_dir / relative
    if not model_file.is_file():
        return f"its model file {relative} is missing from the artifact store"
    actual = file_md5(model_file)
    if actual != recorded_md5:
        return (
            f"its model file in the artifact store has md5 {actual}, but it was registered "
            f"with md5 {recorded_md5} ({TAG_MODEL_MD5}); restore the artifact store from a "
            "backup or promote another version"
        )
    return None


def classifier_signature(
    image_shape: Sequence[int], dtype: np.dtype, class_count: int
) -> ModelSignature:
    """What the registered model takes and gives, as the MLflow UI shows it under Schema: a
    batch of images (N, H, W, C) of ``dtype`` (uint8 pixels 0-255, as the splits hold them)
    and a float32 score (logit) per class. MLflow enforces the input: other dtypes and shapes
    are refused before the model runs; ``mlflow models serve`` reads JSON pixels as ``dtype``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(dtype), (-1, *image_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, class_count), "logits")]),
    )

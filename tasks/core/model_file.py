"""The trained-model file: save it atomically, load it back, run it, log it to MLflow.

``artifacts/model.pt`` holds the weights and everything needed to rebuild the network (model
name and options, input shape, class names, normalisation statistics), so loading it never
depends on ``params.yaml``. Shared by train, evaluate and the pipeline's bookkeeping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import build_classifier
from tasks.core.errors import MlcycleError
from tasks.core.files import ImageDataset, atomic_path, file_md5
from tasks.core.lineage import TAG_MODEL_MD5

FORMAT_VERSION = 1


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` onto ``path`` atomically, with bytes that depend on ``obj`` only."""
    # Through a file handle: torch names the archive after a *path*, which would make the bytes
    # (and DVC's hash) depend on the temporary file's random name.
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        torch.save(obj, handle)


def build_from_spec(spec: dict[str, Any]) -> nn.Sequential:
    return build_classifier(
        spec["model"],
        spec["input_shape"],
        len(spec["class_names"]),
        spec["mean"],
        spec["std"],
        **spec["options"],
    )


def save_model(path: Path, spec: dict[str, Any], model: nn.Module, **details: Any) -> None:
    torch_save(
        {
            "format": FORMAT_VERSION,
            **spec,
            **details,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )


def load_model(path: Path) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild a trained model from its file; returns it in eval mode, on CPU, and its spec."""
    if not path.is_file():
        raise MlcycleError(f"{path}: not found; run the train stage first")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
        model = build_from_spec(bundle)
        model.load_state_dict(bundle["state_dict"])
    except Exception as error:  # torch raises anything from struct.error to UnpicklingError
        raise MlcycleError(
            f"{path}: not a model written by the train stage ({type(error).__name__}: {error})"
        ) from None
    return model.eval(), {k: v for k, v in bundle.items() if k != "state_dict"}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [model(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    )


def log_model(run_id: str, model: nn.Module, examples: ImageDataset, model_path: Path) -> None:
    """Log the model to an MLflow run with a signature and an input example, loadable by
    ``mlflow.pyfunc.load_model``; tag the run with the model file's hash."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    import models

    # A logged model lands in the active experiment, which must be the run's own.
    mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
    model = model.cpu().eval()
    example = examples.images[:5].astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(
        model,
        name="model",
        run_id=run_id,
        signature=infer_signature(example, output),
        input_example=example,
        code_paths=[str(Path(models.__file__).parent)],
        # Naming them skips MLflow's slow requirement inference (it re-imports the model).
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
    )
    MlflowClient().set_tag(run_id, TAG_MODEL_MD5, file_md5(model_path))

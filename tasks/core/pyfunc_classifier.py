"""The registered model's code, as MLflow runs it: ``mlflow.pyfunc.load_model(...)`` executes
this file ("models from code") with ``models/`` and ``tasks/core/model_spec.py`` (as the
top-level ``model_spec``) on the path, and the model file (``artifacts/model.pt``) as an artifact.

Its signature (``tasks.core.model_file.classifier_signature``) declares what the MLflow UI
shows under Schema and MLflow enforces before ``predict`` runs: a batch of uint8 images
(N, H, W, C), as ``data/raw`` and the prediction log hold them. ``predict`` still checks the
shape and takes floats too, for callers that run this class without MLflow's checks. Nothing
is unpickled: the weights load with ``weights_only=True``.

mlcycle never imports this module; it imports nothing of mlcycle's but ``models`` and
``model_spec``, the one reader of the model file's spec.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


class Classifier(mlflow.pyfunc.PythonModel):
    """Class scores (logits, float32, N x classes) of raw images (N, H, W, C) in 0..255."""

    # MLflow checks `predict`'s type hints when this class is defined and warns ("add type
    # hints") past any warning filter; hints would make it validate inputs against one type,
    # which this model must not do. This switch (MLflow's own, for its ChatModel) skips the
    # check; should a later MLflow drop it, the warning comes back and nothing else changes.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import torch
        from model_spec import ModelSpec  # type: ignore[import-not-found]

        bundle = torch.load(context.artifacts["model_file"], map_location="cpu", weights_only=True)
        spec = ModelSpec.from_bundle(bundle)
        self.module = spec.load(bundle["state_dict"])
        self.input_shape = spec.input_shape

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch

        images = np.ascontiguousarray(model_input)
        if (
            images.ndim != 4
            or images.shape[1:] != self.input_shape
            or images.dtype.kind not in "uif"
        ):
            expected = "x".join(str(side) for side in self.input_shape)
            raise ValueError(
                f"expected images of shape (N, {expected.replace('x', ', ')}) with pixel "
                f"values 0-255 (uint8, or floats); got {images.dtype} {images.shape}"
            )
        with torch.inference_mode():
            return self.module(torch.from_numpy(images)).numpy()


mlflow.models.set_model(Classifier())

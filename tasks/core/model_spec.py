"""The model spec: everything that rebuilds a trained network but its weights.

A :class:`ModelSpec` names the family (a key of ``models.MODELS``) and its options, and carries
what the data fixed: the input shape, the class names and the normalisation statistics. The
train stage and the select stage's trials build it from the processed split's metadata; the
model file (``artifacts/model.pt``) stores it as plain keys (:meth:`ModelSpec.to_bundle`) and
every reader gets it back with :meth:`ModelSpec.from_bundle`: one writer, one reader.

This module imports only the standard library and ``models``: the registered model's code
(``tasks/core/pyfunc_classifier.py``) ships it beside ``models/`` and reads the spec with it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models import Classifier, build_classifier

# The bundle's spec keys, in the order the model file holds them (the file's bytes depend on it).
BUNDLE_KEYS = ("model", "options", "input_shape", "class_names", "mean", "std")


@dataclass(frozen=True)
class ModelSpec:
    model: str
    options: Mapping[str, Any]
    input_shape: tuple[int, int, int]  # (H, W, C)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of pixels scaled to 0..1
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def for_split(
        cls, model: str, options: Mapping[str, Any], info: Mapping[str, Any]
    ) -> ModelSpec:
        """The spec of ``model`` with ``options`` trained on a processed split whose metadata
        (``preprocess.json``: ``image_shape``, ``class_names``, ``mean``, ``std``) is ``info``."""
        return cls(
            model=model,
            options=copy.deepcopy(dict(options)),
            input_shape=_shape(info["image_shape"]),
            class_names=tuple(info["class_names"]),
            mean=tuple(info["mean"]),
            std=tuple(info["std"]),
        )

    def to_bundle(self) -> dict[str, Any]:
        """The spec as the model file stores it: plain keys in ``BUNDLE_KEYS`` order, sequences
        as lists (what ``torch.load(weights_only=True)`` reads back, byte for byte as before)."""
        return {
            "model": self.model,
            "options": copy.deepcopy(dict(self.options)),
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any]) -> ModelSpec:
        """The spec a model file's bundle holds (its other keys, weights included, are ignored)."""
        return cls(
            model=str(bundle["model"]),
            options=copy.deepcopy(dict(bundle["options"])),
            input_shape=_shape(bundle["input_shape"]),
            class_names=tuple(bundle["class_names"]),
            mean=tuple(bundle["mean"]),
            std=tuple(bundle["std"]),
        )

    def build(self) -> Classifier:
        """A fresh, untrained network of this spec (raw pixels in, class logits out)."""
        return build_classifier(
            self.model, self.input_shape, self.num_classes, self.mean, self.std, **self.options
        )

    def load(self, state_dict: Mapping[str, Any]) -> Classifier:
        """The trained network: built from this spec, filled with ``state_dict``, in eval mode."""
        network = self.build()
        network.load_state_dict(state_dict)
        return network.eval()


def classifier_from_bundle(bundle: Mapping[str, Any]) -> Classifier:
    """The trained network a model file's bundle holds, in eval mode."""
    return ModelSpec.from_bundle(bundle).load(bundle["state_dict"])


def _shape(values: Sequence[int]) -> tuple[int, int, int]:
    height, width, channels = (int(value) for value in values)
    return height, width, channels

"""The whole of ``params.yaml`` as one frozen object, and its dotted-key view (what MLflow logs)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from tasks.core.config.base import Section
from tasks.core.config.families import MODEL_NAMES
from tasks.core.config.sections import (
    CollectParams,
    EvaluateParams,
    PreprocessParams,
    RegistryParams,
    ValidateParams,
)
from tasks.core.config.select import SelectParams
from tasks.core.config.services import MonitorParams, ScheduleParams, ServeParams
from tasks.core.config.training import AUTO, TrainParams

with warnings.catch_warnings():
    # The section is called `validate`, like its stage; pydantic warns that this shadows
    # BaseModel.validate, a deprecated v1 alias nobody here calls. (The register step's section
    # is `registry`: a field named `register` would take ABCMeta.register as its default.)
    warnings.filterwarnings("ignore", message='Field name "validate"', category=UserWarning)

    class Params(Section):
        collect: CollectParams
        validate: ValidateParams
        preprocess: PreprocessParams
        train: TrainParams
        select: SelectParams
        evaluate: EvaluateParams
        registry: RegistryParams
        serve: ServeParams
        schedule: ScheduleParams
        monitor: MonitorParams

        def inert_prefixes(self) -> tuple[str, ...]:
            """Dotted-key prefixes that cannot change this run's model: the options of families
            it cannot train (neither the fixed ``train.model`` nor a ``select`` candidate), and
            the ``select`` section when the model is fixed."""
            if self.train.model == AUTO:
                used, inert = set(self.select.candidates), []
            else:
                used, inert = {self.train.model}, ["select."]
            return (*inert, *(f"train.{name}." for name in MODEL_NAMES if name not in used))

        def flat(self) -> dict[str, Any]:
            """Dotted keys to values, e.g. ``{"train.lr": 0.001}``: what MLflow logs."""
            return dict(flatten(self.model_dump(mode="json")))


# Mappings that are one value (a search space), not a section: flattened to their canonical
# JSON, so params.yaml, MLflow and dvc.lock (which orders keys its own way) agree on them.
MAPPING_VALUES = frozenset({"select.candidates"})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf: ``{"train": {"lr": 0.1}}`` -> ``("train.lr", 0.1)``."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in MAPPING_VALUES:
            yield dotted, json.dumps(value, sort_keys=True)
        elif isinstance(value, Mapping):
            yield from flatten(value, f"{dotted}.")
        else:
            yield dotted, value

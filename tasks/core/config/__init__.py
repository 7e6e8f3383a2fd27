"""Typed, frozen parameters loaded once from ``params.yaml``, and the one writer of that file.

Every stage reads its section through :func:`load_params`; nothing else parses the YAML.
Unknown keys and wrong types fail with a message naming the dotted key at fault. The modules,
one job each: ``base`` (what every section shares), ``families``, ``training``, ``select``,
``sections`` and ``services`` (the sections), ``params`` (the whole file), ``space`` (the
search space's checks), ``form`` (the Prefect form's schema), ``load`` (reading), ``write``
and ``yaml_text`` (writing, comments kept). Callers import from here.
"""

from tasks.core.config.base import ConfigError, PositiveInts, Seed
from tasks.core.config.families import FAMILY_OPTIONS, MODEL_NAMES
from tasks.core.config.load import (
    apply_override,
    describe_validation_error,
    load_params,
    missing_keys,
    parse_params,
    read_params_tree,
)
from tasks.core.config.params import MAPPING_VALUES, Params, flatten
from tasks.core.config.sections import (
    CollectParams,
    EvaluateParams,
    PreprocessParams,
    RegistryParams,
    ValidateParams,
)
from tasks.core.config.select import SelectParams
from tasks.core.config.services import MonitorParams, ScheduleParams, ServeParams
from tasks.core.config.space import OPTIMIZER_OPTIONS, SpaceError, search_space
from tasks.core.config.training import AUTO, DEVICE_CHOICES, TrainParams
from tasks.core.config.write import apply_params
from tasks.core.config.yaml_text import edit_params_text, same_value

__all__ = [
    "AUTO",
    "DEVICE_CHOICES",
    "FAMILY_OPTIONS",
    "MAPPING_VALUES",
    "MODEL_NAMES",
    "OPTIMIZER_OPTIONS",
    "CollectParams",
    "ConfigError",
    "EvaluateParams",
    "MonitorParams",
    "Params",
    "PositiveInts",
    "PreprocessParams",
    "RegistryParams",
    "ScheduleParams",
    "Seed",
    "SelectParams",
    "ServeParams",
    "SpaceError",
    "TrainParams",
    "ValidateParams",
    "apply_override",
    "apply_params",
    "describe_validation_error",
    "edit_params_text",
    "flatten",
    "load_params",
    "missing_keys",
    "parse_params",
    "read_params_tree",
    "same_value",
    "search_space",
]

"""``mlcycle``: the command line over the flows and the model registry.

- ``mlcycle run [--set section.key=value ...]``: the ``training-pipeline`` flow (ends registered).
- ``mlcycle register [--run RUN_ID]``: the ``register-model`` flow, after a plain ``dvc repro``.
- ``mlcycle models``, ``promote VERSION``, ``rollback``: look at and move the ``champion`` alias.
- ``mlcycle restore VERSION``: bring back the exact data a version was trained on.

Modules: ``parser`` (the arguments; each command names its handler), ``commands`` (the
handlers), ``session`` (the Prefect API, the watch and the workspace a command runs under),
``formatting`` (what it prints), ``main`` (the error edge, signals, the exit).
"""

from flows.cli.main import console_main, main
from flows.cli.parser import build_parser

__all__ = ["build_parser", "console_main", "main"]

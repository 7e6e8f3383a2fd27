"""mlcycle's logic, in rooms by role (see docs/reference/development.md).

Importing it sets quiet defaults."""

import os

# This project's machines have no network beyond package registries: keep the tools' telemetry
# from filling the logs with connection errors. A user's own setting wins.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",  # also Evidently's usage reports
    "EVIDENTLY_DISABLE_TELEMETRY": "1",  # Evidently's legacy switch
    # MLflow's tqdm "Downloading artifacts" bars: carriage-return lines that fill a log (one
    # line of 1,600 characters per registration) and say nothing of a few small files.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_name, _value)

# Our `mlcycle.*` log lines go into the Prefect run log (UI and console) when a task runs them;
# outside a flow run (a stage under plain `dvc repro`) they only go to the console.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "mlcycle")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

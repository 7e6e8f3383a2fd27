"""``python -m tasks.serving``: serve ``registry.model_name@serve.alias`` with the settings in
params.yaml, as ``mlcycle serve`` does (the deploy step starts the app this way)."""

from tasks.core.config import load_params
from tasks.core.console import configure_logging, stage_main
from tasks.core.tracking import connect
from tasks.serving.app import serve


def main() -> None:
    params = load_params()
    configure_logging()
    connect()
    serve(params.serve, params.registry.model_name)


if __name__ == "__main__":
    stage_main(main)

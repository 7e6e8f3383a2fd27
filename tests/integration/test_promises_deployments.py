"""docs/guide/closing-the-loop.md: "Rerun `make deploy` after editing `params.yaml` or moving
the checkout; it updates the deployments in place." `mlcycle deployments apply` (what
`make deploy` runs) twice against a real Prefect server, the second time after both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.core.config import apply_params, load_params
from tests.integration.helpers import copy_project, mlcycle

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DEPLOYMENTS = ("training-pipeline/scheduled", "monitoring/hourly")


def deployed(api_url: str) -> dict[str, tuple[str, list[tuple[str, str]], str]]:
    """Each deployment of ours: (id, its schedules as (cron, time zone), its directory)."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url) as client:
        found = {}
        for name in DEPLOYMENTS:
            deployment = client.read_deployment_by_name(name)
            step = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
            schedules = [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules]
            found[name] = (str(deployment.id), schedules, step["directory"])
        flows = {client.read_flow(d.flow_id).name: 0 for d in client.read_deployments()}
        for deployment in client.read_deployments():
            flows[client.read_flow(deployment.flow_id).name] += 1
    assert flows == {"training-pipeline": 1, "monitoring": 1}, flows  # no second copy
    return found


def test_deploying_again_updates_the_deployments_in_place(
    project_template, prefect_server, tmp_path
):
    server = {"PREFECT_API_URL": prefect_server}
    checkout = copy_project(project_template, tmp_path / "first")
    mlcycle("deployments", "apply", cwd=checkout, **server)
    before = deployed(prefect_server)
    assert before["training-pipeline/scheduled"][1] == [("0 3 * * 1", "UTC")]

    # the checkout moves, and params.yaml gets another schedule
    moved = tmp_path / "moved"
    shutil.move(checkout, moved)
    params = moved / "params.yaml"
    cron, zone = "30 4 * * 2", "Europe/Paris"
    overrides = [f"schedule.retrain_cron={cron}", f"schedule.timezone={zone}"]
    apply_params(load_params(params, overrides=overrides), params)
    mlcycle("deployments", "apply", cwd=moved, **server)
    after = deployed(prefect_server)

    for name in DEPLOYMENTS:
        assert after[name][0] == before[name][0], name  # the same deployment, updated
        assert Path(after[name][2]) == moved.resolve(), name
    assert after["training-pipeline/scheduled"][1] == [(cron, zone)]  # one schedule, the new
    assert after["monitoring/hourly"][1] == [(before["monitoring/hourly"][1][0][0], zone)]

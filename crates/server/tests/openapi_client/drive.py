"""Drives a warmpool server through a Python client generated from its /openapi.json.

Run by `tests/openapi_client.rs`, which generates the `warmpool_client` package, puts it on
PYTHONPATH and passes WARMPOOL_URL, WARMPOOL_TOKEN and REPO_URL (a git repository on the server's
disk). Every call goes through the generated functions and models, so a document the generator
reads wrongly shows up here as a failed call or a body that does not parse. Exits non-zero with
the reason on the first thing that is not as expected.
"""

import os
import sys
import time

import httpx

from warmpool_client import AuthenticatedClient, Client
from warmpool_client.api.health import healthz
from warmpool_client.api.instances import (
    claim_warm_pool_instance,
    delete_warm_pool_instance,
    exec_in_warm_pool_instance,
)
from warmpool_client.api.projects import create_project, delete_project, get_project
from warmpool_client.api.warm_pool import (
    get_warm_pool_instance,
    test_warm_pool_boot,
    update_warm_pool,
)
from warmpool_client.models import (
    ClaimBody,
    ClaimResponse,
    CreateProjectBody,
    ErrorResponse,
    ExecBody,
    ExecResponse,
    HealthResponse,
    Project,
    RepoInput,
    SetupCommand,
    TestWarmPoolBootBody,
    TestWarmPoolBootResponse,
    UpdateWarmPoolBody,
    UpdateWarmPoolResponse,
    WarmPoolInstanceDetail,
)

# How long a boot of the sim backend may take before the test gives up: its VMs start at once,
# so this only bounds a hang.
BOOT_LIMIT_SECONDS = 120


def step(what):
    print(f"drive: {what}", flush=True)


def expect(response, status, model):
    """The parsed body of a response that must have `status` and parse as `model`."""
    if response.status_code != status:
        sys.exit(
            f"expected {status}, got {response.status_code}: {response.content.decode(errors='replace')}"
        )
    if model is None:
        return None
    if not isinstance(response.parsed, model):
        sys.exit(f"expected a {model.__name__}, got {response.parsed!r}")
    return response.parsed


def wait_until_settled(client, project_id, instance_id):
    """Polls the instance until it is no longer provisioning; returns its detail."""
    deadline = time.monotonic() + BOOT_LIMIT_SECONDS
    while True:
        detail = expect(
            get_warm_pool_instance.sync_detailed(project_id, instance_id, client=client),
            200,
            WarmPoolInstanceDetail,
        )
        if detail.status != "provisioning":
            return detail
        if time.monotonic() > deadline:
            sys.exit(f"instance {instance_id} still provisioning after {BOOT_LIMIT_SECONDS} s")
        time.sleep(0.1)


def main():
    url = os.environ["WARMPOOL_URL"]
    repo_url = os.environ["REPO_URL"]
    timeout = httpx.Timeout(60.0)
    client = AuthenticatedClient(
        base_url=url,
        token=os.environ["WARMPOOL_TOKEN"],
        timeout=timeout,
        raise_on_unexpected_status=True,
    )

    step("health")
    health = expect(
        healthz.sync_detailed(client=Client(base_url=url, timeout=timeout)), 200, HealthResponse
    )
    assert health.status == "ok", health

    step("create a project from a git repository")
    project = expect(
        create_project.sync_detailed(
            client=client,
            body=CreateProjectBody(
                name="python client",
                repos=[RepoInput(repo_full_name="acme/demo", url=repo_url)],
            ),
        ),
        201,
        Project,
    )
    assert [r.repo_full_name for r in project.repos] == ["acme/demo"], project

    step("an error answer parses as the one ErrorResponse model")
    error = expect(
        get_project.sync_detailed("proj_0000000000000000", client=client), 404, ErrorResponse
    )
    assert error.error.code == "not_found", error

    step("set the pool's configuration")
    pool = expect(
        update_warm_pool.sync_detailed(
            project.id,
            client=client,
            body=UpdateWarmPoolBody(
                enabled=True,
                target_size=1,
                setup_commands=[SetupCommand(name="greet", command="echo pooled")],
            ),
        ),
        200,
        UpdateWarmPoolResponse,
    )
    assert pool.config.target_size == 1 and pool.config.enabled, pool

    step("start a test boot and wait until it is ready")
    boot = expect(
        test_warm_pool_boot.sync_detailed(project.id, client=client, body=TestWarmPoolBootBody()),
        200,
        TestWarmPoolBootResponse,
    )
    detail = wait_until_settled(client, project.id, boot.id)
    assert detail.status == "ready" and detail.is_test, detail
    assert detail.summary.success, detail.summary
    setup = [s for s in detail.steps if s.name == "warm_pool_setup"]
    assert setup and "pooled" in setup[0].output, detail.steps

    step("claim a VM")
    claim = claim_warm_pool_instance.sync_detailed(
        project.id, client=client, body=ClaimBody(task_id="python-client", wait_seconds=60)
    )
    claimed = expect(claim, 200, ClaimResponse)
    assert claimed.instance.status == "claimed", claimed
    assert claimed.vm is not None and claimed.vm.instance_id == claimed.instance.instance_id, claimed
    vm = claimed.instance.id

    step("run a command in it")
    ran = expect(
        exec_in_warm_pool_instance.sync_detailed(
            project.id, vm, client=client, body=ExecBody(command="echo hello from python")
        ),
        200,
        ExecResponse,
    )
    assert (ran.exit_code, ran.output, ran.timed_out) == (0, "hello from python\n", False), ran
    failed = expect(
        exec_in_warm_pool_instance.sync_detailed(
            project.id, vm, client=client, body=ExecBody(command="exit 3")
        ),
        200,
        ExecResponse,
    )
    assert failed.exit_code == 3, failed

    step("release it")
    expect(delete_warm_pool_instance.sync_detailed(project.id, vm, client=client), 204, None)
    gone = expect(
        get_warm_pool_instance.sync_detailed(project.id, vm, client=client),
        200,
        WarmPoolInstanceDetail,
    )
    assert gone.status == "destroyed", gone
    refused = expect(
        exec_in_warm_pool_instance.sync_detailed(
            project.id, vm, client=client, body=ExecBody(command="echo late")
        ),
        409,
        ErrorResponse,
    )
    assert refused.error.code == "conflict", refused

    step("delete the project")
    expect(delete_project.sync_detailed(project.id, client=client), 204, None)
    step("done")


if __name__ == "__main__":
    main()

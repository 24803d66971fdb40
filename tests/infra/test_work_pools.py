"""infra/ configurations are valid for the installed Prefect: deployments, triggers, work pool templates."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from app.deploy import DATA_EVENT, INFRA_DIR, LOCAL_POOL, LOCAL_POOL_TEMPLATE, PREFECT_FILE, deployment_specs

K8S_TEMPLATE = INFRA_DIR / "k8s" / "gpu-job-template.json"


def variable_defaults(template: dict) -> dict:
    return {k: v["default"] for k, v in template["variables"]["properties"].items() if v.get("default") is not None}


def test_prefect_yaml_is_what_prefect_deploy_reads():
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_FILE.read_text()))
    names = [d.name for d in model.deployments]
    assert names == [
        "ladder-pipeline", "ladder-data", "ladder-tokenizer", "ladder-train", "ladder-scaling", "ladder-evals", "ladder-align",
        "ladder-spikes",
    ]
    assert {d.work_pool.name for d in model.deployments} == {LOCAL_POOL}
    # The pipeline and its stages run a profile; a benchmark (the spike suite) carries its own tiny sizes.
    assert all(d.parameters["profile"] == "tiny" for d in model.deployments if "bench" not in d.tags)
    # Every entrypoint names a flow by module path, and its parameters are ones the flow takes.
    from prefect.flows import load_flow_from_entrypoint

    for deployment in model.deployments:
        found = load_flow_from_entrypoint(deployment.entrypoint)
        assert set(deployment.parameters) <= set(found.parameters.properties), deployment.name


def test_the_pipeline_runs_nightly_and_on_each_new_dataset_version():
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    (pipeline,) = deployment_specs(["ladder-pipeline"])
    assert pipeline["entrypoint"] == "flows.pipeline:pipeline_flow"
    assert [s["cron"] for s in pipeline["schedules"]] == ["0 2 * * *"]
    (trigger,) = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in pipeline["triggers"]]
    assert trigger.expect == {DATA_EVENT}
    assert trigger.match.root == {"prefect.resource.id": "ladder.dataset.*"}
    assert trigger.parameters["dataset_md5"] == "{{ event.payload.md5 }}"
    assert trigger.threshold == 1


def test_local_pool_template_is_a_process_pool_template():
    template = json.loads(LOCAL_POOL_TEMPLATE.read_text())
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    assert set(template["job_configuration"]) >= {"command", "env", "working_dir"}


@pytest.fixture(scope="module")
def k8s_job() -> dict:
    """The GPU pool's Job manifest as the Kubernetes worker renders it with the variables' defaults."""
    from prefect.utilities.templating import apply_values

    template = json.loads(K8S_TEMPLATE.read_text())
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    values = variable_defaults(template) | {
        "name": "train-run", "env": {}, "labels": {}, "command": "prefect flow-run execute"
    }
    return apply_values(template["job_configuration"], values)["job_manifest"]


def test_k8s_template_renders_an_indexed_multi_node_job(k8s_job):
    spec = k8s_job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}  # node 0 runs the flow
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    # Kubernetes rejects an env value that is not a string.
    assert all(isinstance(e["value"], str) for e in container["env"] if "value" in e)
    env = {e["name"]: e for e in container["env"]}
    assert env["LADDER_NODES"]["value"] == "2x8"
    assert env["MASTER_ADDR"]["value"] == "$(JOB_NAME)-0." + pod["subdomain"]
    assert {"JOB_NAME", "NODE_RANK"} <= set(env)
    assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}


def test_k8s_node_script_writes_the_hostfile_and_runs_the_flow_on_node_0(k8s_job, tmp_path: Path):
    container = k8s_job["spec"]["template"]["spec"]["containers"][0]
    shell, flag, script, argv0 = container["command"]
    hostfile = tmp_path / "hostfile"
    env = {
        "PATH": "/usr/bin:/bin", "LADDER_NODES": "2x8", "NODE_RANK": "0",
        "JOB_NAME": "train-run-x7k2", "LADDER_DEEPSPEED_HOSTFILE": str(hostfile),
    }
    # The worker appends the flow run's command as the container's args; `echo` stands in for it.
    done = subprocess.run(
        [shell, flag, script, argv0, "echo", "flow", "run"], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout == "flow run\n"
    assert hostfile.read_text().splitlines() == [
        "train-run-x7k2-0.ladder-train slots=8",
        "train-run-x7k2-1.ladder-train slots=8",
    ]

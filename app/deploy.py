"""Deployments, the data-version event that triggers the pipeline, and where tasks run.

``infra/prefect.yaml`` is the one description of ladder's deployments. ``register`` hands it
to ``prefect deploy`` against the running server (work pool first); ``serve`` runs the same
deployments in this process for a one-machine setup without a worker.

A dataset version is the ``outs[0].md5`` of the workspace's ``data.dvc``. ``record_data_version``
emits ``ladder.data.updated`` for a version the first time it sees it and never again: the
versions already emitted are listed under ``.ladder/``, and the event's id is derived from the
md5, so even an emission whose record was lost is dropped by the server as a duplicate.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ladder.workspace import Workspace

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

CODE_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = CODE_ROOT / "infra"
PREFECT_FILE = INFRA_DIR / "prefect.yaml"
LOCAL_POOL = "ladder-local"
LOCAL_POOL_TEMPLATE = INFRA_DIR / "work-pools" / f"{LOCAL_POOL}.json"

DATA_EVENT = "ladder.data.updated"
DATA_RESOURCE_PREFIX = "ladder.dataset."
HOOK_MARKER = "# installed by `ladder data-version --install-hooks`"
HOOKS = ("post-merge", "post-checkout")


def prefect_api_url() -> str:
    """The API URL Prefect will use in this process; a server must be running there."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ValueError(
            "no Prefect server is configured: start one with `ladder services up` "
            "(or set PREFECT_API_URL to a running server's /api URL)"
        )
    return url


def deployment_specs(names: list[str] | None = None, prefect_file: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """The deployments of ``prefect_file``, all of them or those named (unknown names are errors)."""
    specs = (yaml.safe_load(prefect_file.read_text()) or {}).get("deployments") or []
    if not names:
        return specs
    by_name = {spec["name"]: spec for spec in specs}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ValueError(f"unknown deployment(s) {unknown}: {prefect_file} defines {sorted(by_name)}")
    return [by_name[name] for name in names]


def ensure_work_pool(name: str = LOCAL_POOL, template: Path = LOCAL_POOL_TEMPLATE) -> bool:
    """Create the process work pool from its base job template when missing; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    prefect_api_url()
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=json.loads(template.read_text()))
            )
            return True


def _entrypoint_file(entrypoint: str) -> Path:
    """The source file of a ``package.module:flow`` entrypoint.

    Entrypoints are module paths, not file paths: Prefect puts a flow file's directory first on
    sys.path when it loads one by path, and there a flow module would shadow any package of the
    same name (``flows/train.py`` a ``train`` library) in every process spawned later.
    """
    module = entrypoint.split(":")[0]
    return CODE_ROOT / (module.replace(".", "/") + ".py")


def register(ws: Workspace, names: list[str] | None = None, prefect_file: Path = PREFECT_FILE) -> list[str]:
    """Register the deployments of ``prefect_file`` with the running Prefect server.

    Runs ``prefect deploy`` from the repository root, so the recorded working directory is
    where ``flows/`` imports from, with ``LADDER_ROOT`` set to the workspace that the
    deployments' runs will use. Returns the names registered.
    """
    specs = deployment_specs(names, prefect_file)
    api_url = prefect_api_url()
    ensure_work_pool()
    missing = [s["entrypoint"] for s in specs if not _entrypoint_file(s["entrypoint"]).exists()]
    if missing:
        raise ValueError(
            f"deployment entrypoints not found under {CODE_ROOT}: {missing}; deploy the others with --name"
        )
    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    for spec in specs:
        command += ["--name", spec["name"]]
    env = dict(os.environ, PREFECT_API_URL=api_url, LADDER_ROOT=str(ws.root))
    done = subprocess.run(command, cwd=CODE_ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"`{shlex.join(command)}` failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return [spec["name"] for spec in specs]


def worker_command(pool: str = LOCAL_POOL) -> str:
    """The command that starts a worker for ``pool`` against this process's Prefect server."""
    prefect = Path(sys.executable).parent / "prefect"
    return f"PREFECT_API_URL={prefect_api_url()} {shlex.quote(str(prefect))} worker start --pool {pool}"


def runner_deployments(names: list[str] | None = None, prefect_file: Path = PREFECT_FILE) -> list[RunnerDeployment]:
    """The deployments of ``prefect_file`` as in-process runner deployments (for ``serve``)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentTriggerTypes
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron
    from pydantic import TypeAdapter

    trigger_adapter = TypeAdapter(DeploymentTriggerTypes)
    deployments = []
    for spec in deployment_specs(names, prefect_file):
        schedules = spec.get("schedules") or []
        if any("cron" not in s for s in schedules):
            raise ValueError(f"deployment {spec['name']}: serve supports cron schedules only, got {schedules}")
        flow = load_flow_from_entrypoint(spec["entrypoint"])
        deployments.append(
            flow.to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters"),
                schedules=[
                    Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True)) for s in schedules
                ],
                triggers=[trigger_adapter.validate_python(t) for t in spec.get("triggers") or []],
                # By file path, the runner would put flows/ first on sys.path, where a flow module
                # shadows any package of its name: load flows by module, as `ladder deploy` does.
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


def serve(names: list[str] | None = None) -> None:
    """Serve the deployments in this process until interrupted: schedules, triggers, runs."""
    from prefect import serve as prefect_serve

    prefect_api_url()
    prefect_serve(*runner_deployments(names))


def data_event_id(md5: str) -> uuid.UUID:
    """The one event id of a dataset version, the same wherever and whenever it is emitted."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{DATA_EVENT}:{md5}")


@dataclass(frozen=True)
class DataVersion:
    """A dataset version and whether this call emitted its event (False: emitted before)."""

    md5: str
    emitted: bool
    event_id: str


def _versions_file(ws: Workspace) -> Path:
    return ws.state / "data-versions.jsonl"


def emitted_versions(ws: Workspace) -> list[str]:
    """The dataset versions whose event this workspace has emitted, oldest first."""
    path = _versions_file(ws)
    if not path.exists():
        return []
    return [json.loads(line)["md5"] for line in path.read_text().splitlines() if line.strip()]


def _emit(md5: str, event_id: uuid.UUID) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    event = Event(
        id=event_id,
        event=DATA_EVENT,
        resource={"prefect.resource.id": f"{DATA_RESOURCE_PREFIX}{md5}", "prefect.resource.name": f"dataset {md5}"},
        payload={"md5": md5, "path": "data"},
    )
    # The HTTP endpoint answers only once the server has accepted the event, unlike the
    # fire-and-forget websocket that emit_event uses; we record the version only after that.
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/events", json=[event.model_dump(mode="json")])
        response.raise_for_status()


def record_data_version(ws: Workspace) -> DataVersion:
    """Emit ``ladder.data.updated`` for the workspace's dataset version unless already emitted."""
    from tasks.data.version import dataset_version

    md5 = dataset_version(ws)
    event_id = data_event_id(md5)
    prefect_api_url()
    ws.state.mkdir(parents=True, exist_ok=True)
    # Concurrent calls (two hooks, a hook and a flow) must not both see "new" and both emit.
    with (ws.state / "data-versions.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if md5 in emitted_versions(ws):
            return DataVersion(md5, emitted=False, event_id=str(event_id))
        _emit(md5, event_id)
        record = {"md5": md5, "event_id": str(event_id), "emitted_at": datetime.now(timezone.utc).isoformat()}
        with _versions_file(ws).open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    return DataVersion(md5, emitted=True, event_id=str(event_id))


def install_git_hooks(ws: Workspace) -> list[Path]:
    """Install ``post-merge`` and ``post-checkout`` hooks that run ``ladder data-version``.

    A hook that exists and is not ours is left alone (DVC installs its own ``post-checkout``,
    which ends in ``exec``, so a line appended to it would never run): the error says what to add.
    """
    try:
        hooks_dir = Path(
            subprocess.run(
                ["git", "rev-parse", "--git-path", "hooks"], cwd=ws.root, capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise ValueError(f"{ws.root} is not a git repository: `git init` it first") from None
    hooks_dir = hooks_dir if hooks_dir.is_absolute() else ws.root / hooks_dir
    ladder_bin = Path(sys.executable).parent / "ladder"
    line = f"{shlex.quote(str(ladder_bin))} --root {shlex.quote(str(ws.root))} data-version"
    script = (
        f"#!/bin/sh\n{HOOK_MARKER}\n"
        "# A new data.dvc md5 starts the pipeline once; a failure here must not fail the git command.\n"
        f"{line} || echo 'ladder: dataset version not recorded (is `ladder services up` running?)' >&2\n"
        "exit 0\n"
    )
    foreign = [h for h in HOOKS if (hooks_dir / h).exists() and HOOK_MARKER not in (hooks_dir / h).read_text()]
    if foreign:
        raise ValueError(
            f"git hooks {foreign} already exist in {hooks_dir}: add this line to them yourself "
            f"(before any `exec`): {line}"
        )
    hooks_dir.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in HOOKS:
        path = hooks_dir / name
        path.write_text(script)
        path.chmod(0o755)
        installed.append(path)
    return installed

"""Deployments spec, dataset versions, once-per-version emission, git hooks, task runners."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from app import deploy
from ladder.workspace import Workspace
from tasks.data.version import dataset_version

MD5_A = "0123456789abcdef0123456789abcdef.dir"
MD5_B = "fedcba9876543210fedcba9876543210.dir"


def write_dvc(ws, md5: str) -> None:
    out = {"md5": md5, "size": 1, "nfiles": 1, "hash": "md5", "path": "data"}
    ws.data_dvc.write_text(yaml.safe_dump({"outs": [out]}))


def test_dataset_md5_reads_data_dvc(tmp_path):
    ws = Workspace(tmp_path)
    write_dvc(ws, MD5_A)
    assert dataset_version(ws) == MD5_A


def test_dataset_md5_names_the_fix_when_missing_or_malformed(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(ValueError, match="ladder data"):
        dataset_version(ws)
    ws.data_dvc.write_text("outs: []\n")
    with pytest.raises(ValueError, match="dvc add data"):
        dataset_version(ws)


def test_the_event_id_is_a_function_of_the_md5_only():
    assert deploy.data_event_id(MD5_A) == deploy.data_event_id(MD5_A)
    assert deploy.data_event_id(MD5_A) != deploy.data_event_id(MD5_B)


def test_unknown_deployment_names_are_errors():
    with pytest.raises(ValueError, match="ladder-pipeline"):
        deploy.deployment_specs(["ladder-pipelin"])


def test_record_data_version_emits_each_version_once(tmp_path, prefect_harness):
    ws = Workspace(tmp_path)
    write_dvc(ws, MD5_A)
    first = deploy.record_data_version(ws)
    again = deploy.record_data_version(ws)
    write_dvc(ws, MD5_B)
    second = deploy.record_data_version(ws)
    assert (first.md5, first.emitted) == (MD5_A, True)
    assert (again.md5, again.emitted) == (MD5_A, False)
    assert (second.md5, second.emitted) == (MD5_B, True)
    assert first.event_id == str(deploy.data_event_id(MD5_A))
    assert deploy.emitted_versions(ws) == [MD5_A, MD5_B]


def test_git_hooks_run_data_version_and_never_fail_git(workspace):
    hooks = deploy.install_git_hooks(workspace)
    assert [h.name for h in hooks] == ["post-merge", "post-checkout"]
    assert deploy.install_git_hooks(workspace) == hooks  # reinstalling our own hooks is fine
    write_dvc(workspace, MD5_A)
    subprocess.run(["git", "add", "data.dvc"], cwd=workspace.root, check=True)
    subprocess.run(["git", "commit", "-q", "--no-verify", "-m", "dataset"], cwd=workspace.root, check=True)
    # No Prefect server answers in the test workspace: the hook says so and git still succeeds.
    done = subprocess.run(
        ["git", "checkout", "-q", "-b", "feature"], cwd=workspace.root, capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "dataset version not recorded" in done.stderr
    assert "ladder services up" in done.stdout + done.stderr


def test_git_hooks_leave_a_foreign_hook_alone(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    foreign = tmp_path / ".git" / "hooks" / "post-checkout"
    foreign.write_text("#!/bin/sh\nexec dvc git-hook post-checkout \"$@\"\n")
    with pytest.raises(ValueError, match="data-version"):
        deploy.install_git_hooks(Workspace(tmp_path))
    assert "dvc git-hook" in foreign.read_text()
    assert not (tmp_path / ".git" / "hooks" / "post-merge").exists()


def test_git_hooks_need_a_git_repository(tmp_path):
    with pytest.raises(ValueError, match="git init"):
        deploy.install_git_hooks(Workspace(tmp_path))


def test_serve_builds_the_same_deployments_as_prefect_yaml():
    (pipeline,) = deploy.runner_deployments(["ladder-pipeline"])
    assert (pipeline.name, pipeline.flow_name) == ("ladder-pipeline", "pipeline")
    assert [s.schedule.cron for s in pipeline.schedules] == ["0 2 * * *"]
    (trigger,) = pipeline.triggers
    assert trigger.expect == {deploy.DATA_EVENT}
    assert trigger.parameters["dataset_md5"] == "{{ event.payload.md5 }}"

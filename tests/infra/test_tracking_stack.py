"""The team's tracking stack as a checked configuration (no container runs here: no images can be pulled).

Its start script runs for real under `sh`: the preflight that refuses placeholder secrets and unpinned images.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

SERVICES = Path(__file__).resolve().parents[2] / "infra" / "services"
STACK = yaml.safe_load((SERVICES / "tracking-stack.yaml").read_text())
EXAMPLE = dict(
    line.split("=", 1) for line in (SERVICES / "tracking.env.example").read_text().splitlines()
    if line and not line.startswith("#")
)
DIGEST = "@sha256:" + "0" * 64


def _filled() -> dict[str, str]:
    """tracking.env.example as a team fills it: real secrets, images pinned by digest."""
    return {key: value.replace("@sha256:FILL", DIGEST).replace("change-me", "a-real-secret-1") for key, value in EXAMPLE.items()}


def _preflight(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SERVICES / "mlflow-image" / "start.sh"), "check"], env=env,
                          capture_output=True, text=True, timeout=30)


def test_images_are_pinned_through_tracking_env_or_built_and_nothing_installs_at_start() -> None:
    for name, service in STACK["services"].items():
        image = service["image"]
        assert re.fullmatch(r"\$\{[A-Z]+_IMAGE:\?pin it by digest in tracking.env\}", image) or "build" in service, name
        assert "pip install" not in str(service.get("command", "")), name
    requirements = (SERVICES / "mlflow-image" / "requirements.txt").read_text().splitlines()
    assert all("==" in line for line in requirements if line and not line.startswith("#"))


def test_ports_are_published_on_loopback_only() -> None:
    published = [port for service in STACK["services"].values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)


def test_every_variable_the_stack_reads_is_in_the_example() -> None:
    text = (SERVICES / "tracking-stack.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))
    assert used <= set(EXAMPLE), used - set(EXAMPLE)


@pytest.mark.parametrize("change, refusal", [
    ({}, "POSTGRES_PASSWORD still holds the placeholder change-me"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": ""}, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
    ({"POSTGRES_IMAGE": "postgres:16"}, "POSTGRES_IMAGE is not pinned by digest"),
])
def test_the_preflight_refuses_placeholders_and_unpinned_images(change: dict[str, str], refusal: str) -> None:
    env = {**(_filled() if change else EXAMPLE), **change}
    done = _preflight(env)
    assert done.returncode == 1 and refusal in done.stderr, done.stderr
    assert _preflight(_filled()).returncode == 0

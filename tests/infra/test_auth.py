"""A team's servers with authentication: MLflow's basic-auth app on PostgreSQL, Prefect with basic auth.

One set of real servers for the module: a PostgreSQL cluster made with Debian's `initdb` in a
temporary directory on a free loopback port (the tracking store and MLflow's user store are
two databases in it), then `services.up(auth=True)` and `set_up_accounts` as a team would run
them (`ladder services accounts`), with the secrets in a 0600 file outside the repository. Each
test acts as one account.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from app.cli import app
from ladder import services
from ladder.workspace import Workspace
from tasks.evals import registry
from tasks.evals.gate import Check, Decision
from tasks.evals.runner import Metric, table_to_dict

NAME = "ladder-team"
PASSED = Decision(True, [Check("floor", "ppl/bits_per_byte", True, "2.0 must be <= 3")])
REJECTED = Decision(False, [Check("regression", "ppl/bits_per_byte", False, "worse by +0.5000")])
PASSWORDS = {
    services.PIPELINE_USER: "pipeline-secret-1",
    "rita": "release-secret-1",
    "rob": "reader-secret-12",
}
PREFECT_AUTH = "ladder:prefect-secret-1"
# Real servers: PostgreSQL, MLflow and Prefect, one set for the module.
pytestmark = pytest.mark.slow
# Bounds a failure only: PostgreSQL answers within a second or two here.
POSTGRES_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields the URI prefix of its databases.

    PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to `nobody`.
    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql: apt-get install postgresql")
    bindir = Path(found[-1]).parent
    # Not under pytest's tmp_path: its parents are root-only, which `nobody` cannot enter.
    root = Path(tempfile.mkdtemp(prefix="ladder-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    port = _free_port()
    server = None
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "ladder", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=POSTGRES_TIMEOUT_S)
        server = subprocess.Popen(
            [*as_user, str(bindir / "postgres"), "-D", str(root / "data"), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(root), "-F"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + POSTGRES_TIMEOUT_S
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "PostgreSQL did not start"
            time.sleep(0.2)
        for database in ("mlflow", "mlflow_auth"):
            subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "ladder", database],
                           check=True, capture_output=True, timeout=POSTGRES_TIMEOUT_S)
        yield f"postgresql://ladder@127.0.0.1:{port}"
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown: ends every backend
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Team:
    ws: Workspace
    mlflow_url: str
    prefect_url: str
    secrets: Path
    experiment: str


@pytest.fixture(scope="module")
def team(module_workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    ws = module_workspace
    secrets = tmp_path_factory.mktemp("home") / "secrets.env"
    secrets.write_text(
        f"{services.PREFECT_SERVER_AUTH}={PREFECT_AUTH}\n"
        f"{services.PREFECT_CLIENT_AUTH}={PREFECT_AUTH}\n"
        f"{services.MLFLOW_ADMIN_PASSWORD}=admin-secret-12\n"
        f"{services.MLFLOW_SECRET_KEY}=flask-secret-key-1\n"
        f"{services.PIPELINE_PASSWORD}={PASSWORDS[services.PIPELINE_USER]}\n"
        f"{services.RELEASE_MANAGERS}=rita:{PASSWORDS['rita']}\n"
        f"{services.READERS}=rob:{PASSWORDS['rob']}\n"
    )
    secrets.chmod(0o600)
    prefect_port, mlflow_port = _free_port(), _free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    os.environ[services.SECRETS_ENV] = str(secrets)
    services.load_secrets(ws)
    with postgres() as databases:
        try:
            services.up(ws, auth=True, mlflow_store=f"{databases}/mlflow", auth_store=f"{databases}/mlflow_auth",
                        prefect_port=prefect_port, mlflow_port=mlflow_port, timeout=120)
            # As the admin runs it; the admin's password and the accounts come from the secrets file.
            accounts = CliRunner().invoke(app, ["services", "accounts"], env={"LADDER_MLFLOW_URL": mlflow_url})
            assert accounts.exit_code == 0 and "rita: release-manager" in accounts.output, accounts.output
            os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
            mlflow.set_tracking_uri(mlflow_url)
            # Outside `_as(...)` a test is the reader.
            os.environ.update({services.MLFLOW_USER: "rob", services.MLFLOW_PASSWORD: PASSWORDS["rob"]})
            with services.signed_in(services.PIPELINE_USER, PASSWORDS[services.PIPELINE_USER]):
                experiment = MlflowClient().get_experiment_by_name(services.EXPERIMENT).experiment_id
            yield Team(ws, mlflow_url, f"http://127.0.0.1:{prefect_port}", secrets, experiment)
        finally:
            services.down(ws)
            mlflow.set_tracking_uri(ws.mlflow_db_uri)


def _as(username: str):
    return services.signed_in(username, PASSWORDS[username])


def _candidate(team: Team, name: str, bpb: float) -> str:
    """A version registered by the pipeline from a run holding a stand-in model and an eval table."""
    with _as(services.PIPELINE_USER):
        with mlflow.start_run(experiment_id=team.experiment) as run:
            mlflow.log_text("stand-in", "model/MLmodel")
            mlflow.log_dict(table_to_dict({"ppl/bits_per_byte": Metric(bpb, 0.01, False, 10)}), registry.METRICS_ARTIFACT)
        return str(registry.register_candidate(name, f"runs:/{run.info.run_id}/model", {registry.SUITE_TAG: "s1"}).version)


def _status(url: str, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_requests_without_credentials_get_401_and_health_stays_open(team: Team) -> None:
    assert _status(f"{team.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert _status(f"{team.prefect_url}/api/flows/filter", b"{}") == 401
    assert _status(f"{team.mlflow_url}/health") == 200
    assert _status(f"{team.prefect_url}/api/health") == 200


def test_a_prefect_client_needs_the_credential_from_the_secrets_file(team: Team) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import PrefectHTTPStatusError

    with SyncPrefectClient(api=f"{team.prefect_url}/api") as client:
        with pytest.raises(PrefectHTTPStatusError, match="401"):
            client.read_work_pools()
    # A fresh process, as a worker or `ladder` command starts: the credential comes from the secrets file alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=f"{team.prefect_url}/api", LADDER_SECRETS=str(team.secrets))
    script = (
        "from ladder import services; from ladder.workspace import Workspace\n"
        "services.load_secrets(Workspace.from_env())\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as client: print('pools', len(client.read_work_pools()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "pools 0" in done.stdout, done.stderr[-2000:]


def test_the_pipeline_promotes_through_the_gate_and_readers_get_403(team: Team) -> None:
    first = _candidate(team, NAME, 2.0)
    with _as(services.PIPELINE_USER):
        assert registry.record_decision(NAME, first, PASSED, "runs:/r/gate_report.md", "k1", None) == registry.CHAMPION
    champion = registry.resolve(f"{NAME}@{registry.CHAMPION}")
    assert champion.tags["ladder.promotion"] == "gate"
    assert champion.tags["ladder.promotion.by"] == services.PIPELINE_USER
    assert champion.tags[registry.REPORT_TAG] == "runs:/r/gate_report.md"

    with _as("rob"):
        client = MlflowClient()
        assert registry.alias_version(NAME, registry.CHAMPION) == first  # readers read
        with pytest.raises(MlflowException) as moved:
            client.set_registered_model_alias(NAME, registry.CHAMPION, first)
        with pytest.raises(MlflowException) as registered:
            client.create_model_version(NAME, champion.source, run_id=champion.run_id)
        with pytest.raises(MlflowException) as logged:
            client.create_run(team.experiment)
    assert [e.value.get_http_status_code() for e in (moved, registered, logged)] == [403, 403, 403]


def test_only_a_release_manager_overrides_the_gate_and_the_reason_is_recorded(team: Team) -> None:
    reason = "the lead accepts the regression for the demo"
    name = f"{NAME}-override"
    champion, rejected = _candidate(team, name, 2.0), _candidate(team, name, 2.5)
    with _as(services.PIPELINE_USER):
        registry.record_decision(name, champion, PASSED, "runs:/r/gate_report.md", "k1", None)
        assert registry.record_decision(name, rejected, REJECTED, "runs:/s/gate_report.md", "k2", champion) == registry.CHALLENGER
    for someone in (services.PIPELINE_USER, "rob"):
        with _as(someone), pytest.raises(PermissionError, match=f"{someone} may not override"):
            registry.promote_manually(name, rejected, reason, override_gate=True)
    with _as("rita"), pytest.raises(ValueError, match="needs a reason"):
        registry.promote_manually(name, rejected, " ", override_gate=True)
    assert registry.alias_version(name, registry.CHAMPION) == champion

    # As a release manager runs it: the command line, credentials from the environment.
    cli = CliRunner().invoke(
        app, ["promote", f"{name}/{rejected}", "--reason", reason, "--override-gate"],
        env={services.MLFLOW_USER: "rita", services.MLFLOW_PASSWORD: PASSWORDS["rita"]},
    )
    assert cli.exit_code == 0, cli.output
    promoted = registry.resolve(f"{name}@{registry.CHAMPION}")
    assert str(promoted.version) == rejected
    assert {k: promoted.tags[f"ladder.promotion{k}"] for k in ("", ".by", ".reason", ".override_gate")} == {
        "": "manual", ".by": "rita", ".reason": reason, ".override_gate": "true"}
    demoted = registry.resolve(f"{name}/{champion}")
    assert (demoted.tags[registry.SUPERSEDED_TAG], demoted.tags[f"{registry.SUPERSEDED_TAG}.by"]) == (rejected, "rita")
    with _as("rita"):
        records = MlflowClient().get_registered_model(services.OVERRIDES_MODEL).tags
    [(key, record)] = records.items()
    assert key.startswith(f"{name}/{rejected}/") and '"by": "rita"' in record and reason in record

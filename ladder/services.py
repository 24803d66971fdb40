"""Start and stop the local Prefect and MLflow servers, in the background, on loopback; accounts for a team.

Both servers keep their state in the workspace (Prefect's SQLite under ``PREFECT_HOME``,
MLflow's SQLite store and artifact root under ``.ladder/mlflow``), the same files that flows
use when no server runs.

With ``auth`` the same servers ask for credentials: MLflow runs its basic-auth app (users and
per-experiment, per-registered-model permissions, kept in their own store) and Prefect's
server takes a basic-auth string. Credentials come from the environment or from the secrets
file (:func:`load_secrets`), never from the command line. :func:`set_up_accounts` creates the
team's accounts and grants what each may do (``infra/README.md`` lists it).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ladder.runtime import healthy, mlflow_server_url, prefect_api_url
from ladder.workspace import Workspace

if TYPE_CHECKING:
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

# The secrets file: KEY=VALUE lines, read into the environment by every `ladder` command.
SECRETS_ENV = "LADDER_SECRETS"
DEFAULT_SECRETS = Path("~/.config/ladder/secrets.env")
# The placeholder in infra/services/*.example: a secret still holding it was never set.
PLACEHOLDER = "change-me"
# How long MLflow's auth app trusts a password it has checked (per worker; `up` starts one).
AUTH_CACHE_TTL_S = 300
# MLflow's auth app refuses shorter passwords.
MIN_PASSWORD_CHARS = 12

# Server side: what `up(auth=True)` needs.
PREFECT_SERVER_AUTH = "PREFECT_SERVER_API_AUTH_STRING"
MLFLOW_ADMIN_PASSWORD = "MLFLOW_AUTH_ADMIN_PASSWORD"
MLFLOW_SECRET_KEY = "MLFLOW_FLASK_SERVER_SECRET_KEY"
# Client side: who a worker, a deployment or a `ladder` command is (read by Prefect and MLflow themselves).
PREFECT_CLIENT_AUTH = "PREFECT_API_AUTH_STRING"
MLFLOW_USER = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
# Accounts that `set_up_accounts` creates: NAME:PASSWORD pairs separated by commas.
PIPELINE_PASSWORD = "LADDER_PIPELINE_PASSWORD"
RELEASE_MANAGERS = "LADDER_RELEASE_MANAGERS"
READERS = "LADDER_READERS"

ADMIN_USER = "admin"
PIPELINE_USER = "ladder-pipeline"
EXPERIMENT = "ladder"
# A registered model that holds no model: its tags are the record of every gate override, and
# only release managers may write them, so writing one is the override permission itself.
OVERRIDES_MODEL = "ladder.gate-overrides"


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    health_url: str
    ui_url: str
    # An API address that answers 401 to a request without credentials when the server asks for them.
    guarded_url: str


# What an account may do on the tracking server; set_up_accounts grants it.
Role = Literal["pipeline", "release-manager", "reader"]


@dataclass(frozen=True)
class Account:
    """A person or machine on the team's tracking server, and the role that fixes its permissions."""

    username: str
    password: str
    role: Role


def secrets_path() -> Path:
    """Where the secrets file is: ``$LADDER_SECRETS``, else ``~/.config/ladder/secrets.env``."""
    return Path(os.environ.get(SECRETS_ENV) or DEFAULT_SECRETS).expanduser()


def _git_ignored(path: Path, repo: Path) -> bool:
    done = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(path)], capture_output=True)
    return done.returncode == 0


def load_secrets(ws: Workspace) -> dict[str, str]:
    """Read the secrets file into the environment (variables already set win); returns what it set.

    A missing file is no error (a single user on loopback needs none). A file others can read
    is refused, and so is one inside the workspace that git would commit.
    """
    path = secrets_path()
    if not path.exists():
        return {}
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"secrets file {path} has mode {mode:04o}: others may read it; run `chmod 600 {path}`")
    if path.resolve().is_relative_to(ws.root.resolve()) and not _git_ignored(path, ws.root):
        raise ValueError(f"secrets file {path} is inside the repository and not git-ignored: move it out, or list it in .gitignore")
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE (the line is not shown: it may hold a secret)")
        found[key.strip()] = value.strip()
    loaded = {key: value for key, value in found.items() if key not in os.environ}
    os.environ.update(loaded)
    return loaded


def require_secret(name: str) -> str:
    """The secret ``name`` from the environment (the secrets file is loaded into it); refused when unset or a placeholder."""
    value = os.environ.get(name, "")
    if not value:
        raise ValueError(f"{name} is not set: put {name}=... in {secrets_path()} (mode 0600) or the environment")
    if PLACEHOLDER in value:
        raise ValueError(f"{name} still holds the placeholder {PLACEHOLDER!r}: set a real secret in {secrets_path()}")
    return value


def _password(name: str, password: str, source: str) -> str:
    if PLACEHOLDER in password or len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(
            f"the password of {name} in {source} is a placeholder or shorter than {MIN_PASSWORD_CHARS} characters: "
            f"set a real one in {secrets_path()}"
        )
    return password


def accounts_from_env() -> list[Account]:
    """The team's accounts as the secrets name them: the pipeline's password, and NAME:PASSWORD lists of the others."""
    accounts = [Account(PIPELINE_USER, _password(PIPELINE_USER, require_secret(PIPELINE_PASSWORD), PIPELINE_PASSWORD), "pipeline")]
    for variable, role in ((RELEASE_MANAGERS, "release-manager"), (READERS, "reader")):
        for pair in filter(None, (p.strip() for p in os.environ.get(variable, "").split(","))):
            name, colon, password = pair.partition(":")
            if not colon or not name:
                raise ValueError(f"{variable}: expected NAME:PASSWORD pairs separated by commas, got {pair.split(':')[0]!r}")
            accounts.append(Account(name, _password(name, password, variable), role))
    names = [a.username for a in accounts]
    if len(set(names)) != len(names) or ADMIN_USER in names:
        raise ValueError(f"account names must be unique and not {ADMIN_USER!r}: {', '.join(names)}")
    return accounts


def services(
    ws: Workspace, host: str = "127.0.0.1", prefect_port: int = 4200, mlflow_port: int = 5000,
    auth: bool = False, mlflow_store: str | None = None,
) -> list[Service]:
    """The two servers; ``mlflow_store`` is MLflow's backend store (default: the workspace's SQLite)."""
    bindir = Path(sys.executable).parent
    return [
        Service(
            "prefect",
            [str(bindir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
            f"http://127.0.0.1:{prefect_port}/api/health",
            f"http://127.0.0.1:{prefect_port}",
            f"http://127.0.0.1:{prefect_port}/api/admin/version",
        ),
        Service(
            "mlflow",
            [
                str(bindir / "mlflow"), "server",
                *(["--app-name", "basic-auth"] if auth else []),
                "--host", host, "--port", str(mlflow_port),
                "--backend-store-uri", mlflow_store or ws.mlflow_db_uri,
                "--default-artifact-root", ws.mlflow_artifact_root.as_uri(),
                "--no-serve-artifacts",
                "--workers", "1",
            ],
            f"http://127.0.0.1:{mlflow_port}/health",
            f"http://127.0.0.1:{mlflow_port}",
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1",
        ),
    ]


def _auth_env(ws: Workspace, auth_store: str | None) -> dict[str, str]:
    """The servers' authentication settings; refused when a secret is missing or a placeholder."""
    config = ws.services / "mlflow-auth.ini"
    # Every account starts with READ on what it was not granted: people read runs, models and artifacts.
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {auth_store or 'sqlite:///' + str(ws.mlflow_dir / 'auth.db')}\n"
        f"admin_username = {ADMIN_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # A password check is a deliberately slow hash (about a second on a busy core), paid on
        # every request otherwise; one worker's cache stays exact, since a change of password
        # through the API clears it on the worker that made it.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n"
    )
    config.chmod(0o600)  # the store's URI may hold a database password
    return {
        PREFECT_SERVER_AUTH: require_secret(PREFECT_SERVER_AUTH),
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        # Creates the admin on the first start against an empty user store; MLflow has no default.
        MLFLOW_ADMIN_PASSWORD: _password(ADMIN_USER, require_secret(MLFLOW_ADMIN_PASSWORD), MLFLOW_ADMIN_PASSWORD),
        MLFLOW_SECRET_KEY: require_secret(MLFLOW_SECRET_KEY),
    }


def _asks_credentials(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=10).close()
    except urllib.error.HTTPError as err:
        return err.code == 401
    return False


def _pid_file(ws: Workspace, name: str) -> Path:
    return ws.services / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        # A child of this process that exited stays a zombie, which kill(pid, 0) still finds.
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its parent or init reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def up(
    ws: Workspace, timeout: float = 180.0, only: set[str] | None = None, auth: bool = False,
    mlflow_store: str | None = None, auth_store: str | None = None, **ports: int,
) -> list[Service]:
    """Start every service (or those named in ``only``) not yet healthy and wait until they answer their health check.

    ``auth`` turns on authentication (the secrets must be set, see :func:`load_secrets`);
    ``mlflow_store`` and ``auth_store`` are the database URIs of MLflow's tracking and user
    stores (default: SQLite files in the workspace).
    """
    ws.services.mkdir(parents=True, exist_ok=True)
    ws.prefect_home.mkdir(parents=True, exist_ok=True)
    ws.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PREFECT_HOME=str(ws.prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="true",
        # MLflow's job runner (GenAI scorers, trace rollups) is seven more processes that ladder
        # never uses; without them the server also stops within down()'s grace period.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    env.pop("PREFECT_API_URL", None)
    # Without --auth the servers are open whatever the secrets file holds: auth is one switch.
    for key in (PREFECT_SERVER_AUTH, MLFLOW_ADMIN_PASSWORD):
        env.pop(key, None)
    if auth:
        env.update(_auth_env(ws, auth_store))
    started = services(ws, auth=auth, mlflow_store=mlflow_store, **ports)
    # The UI calls the API at the port in the server's settings, not the one given by --port.
    env["PREFECT_UI_API_URL"] = next(s.ui_url for s in started if s.name == "prefect") + "/api"
    started = [svc for svc in started if only is None or svc.name in only]
    for svc in started:
        if healthy(svc.health_url):
            # A server already up without authentication must not pass for the guarded one asked for.
            if auth and not _asks_credentials(svc.guarded_url):
                raise RuntimeError(
                    f"{svc.name} already runs at {svc.ui_url} without authentication: "
                    f"stop it (`ladder services down`) and start again with --auth"
                )
            continue
        log = (ws.services / f"{svc.name}.log").open("ab")
        proc = subprocess.Popen(
            svc.command, cwd=ws.root, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        _pid_file(ws, svc.name).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    for svc in started:
        while not healthy(svc.health_url):
            pid_file = _pid_file(ws, svc.name)
            if pid_file.exists() and not _alive(int(pid_file.read_text())):
                raise RuntimeError(f"{svc.name} server exited at start: see {ws.services / (svc.name + '.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{svc.name} server not healthy at {svc.health_url} after {timeout:.0f}s: "
                    f"see {ws.services / (svc.name + '.log')}"
                )
            time.sleep(0.5)
    return started


def down(ws: Workspace) -> list[str]:
    """Stop the services this workspace started; returns the names stopped."""
    stopped = []
    for pid_file in sorted(ws.services.glob("*.pid")) if ws.services.exists() else []:
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            stopped.append(pid_file.stem)
        pid_file.unlink()
    return stopped


def urls() -> dict[str, str]:
    return {"prefect": prefect_api_url().removesuffix("/api"), "mlflow": mlflow_server_url()}


@contextmanager
def signed_in(username: str, password: str) -> Iterator[None]:
    """Make MLflow's clients in this process act as ``username`` (they read the credentials at each request)."""
    saved = {key: os.environ.get(key) for key in (MLFLOW_USER, MLFLOW_PASSWORD)}
    os.environ.update({MLFLOW_USER: username, MLFLOW_PASSWORD: password})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_overrides_model(client: MlflowClient) -> None:
    """Create :data:`OVERRIDES_MODEL`; whoever creates it may write it, so on a team's server the admin does."""
    client.create_registered_model(OVERRIDES_MODEL, description="The record of every release-gate override; not a model.")


def _grant(admin: AuthServiceClient, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Grant exactly ``permission``, replacing a different earlier grant (set-up may run again)."""
    from mlflow.exceptions import MlflowException

    try:
        admin.grant_user_permission(username, resource_type, resource_id, permission)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        admin.revoke_user_permission(username, resource_type, resource_id)
        admin.grant_user_permission(username, resource_type, resource_id, permission)


def set_up_accounts(mlflow_url: str, accounts: list[Account]) -> dict[str, str]:
    """Create (or reset the password of) every account on an auth-enabled MLflow server and grant its role; as the admin.

    The pipeline owns the ``ladder`` experiment (MANAGE) and every registered model (MANAGE:
    registering versions, moving aliases and deleting ``challenger``); release managers hold
    MANAGE on registered models to move ``@champion`` and EDIT on :data:`OVERRIDES_MODEL`, the
    override permission, which the pipeline is denied; readers keep the server's default, READ.
    Returns each account's role.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client
    from mlflow.tracking import MlflowClient

    admin_password = require_secret(MLFLOW_ADMIN_PASSWORD)
    with signed_in(ADMIN_USER, admin_password):
        admin = get_app_client("basic-auth", tracking_uri=mlflow_url)
        client = MlflowClient(tracking_uri=mlflow_url)
        for account in accounts:
            try:
                admin.create_user(account.username, account.password)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                admin.update_user_password(account.username, account.password)
        # Created here, without an artifact location, so that runs use the server's artifact store.
        found = client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else client.create_experiment(EXPERIMENT)
        if client.search_registered_models(f"name = '{OVERRIDES_MODEL}'") == []:
            create_overrides_model(client)
        for account in accounts:
            if account.role == "pipeline":
                _grant(admin, account.username, "experiment", experiment, "MANAGE")
                _grant(admin, account.username, "registered_model", "*", "MANAGE")
                _grant(admin, account.username, "registered_model", OVERRIDES_MODEL, "DENY")
            elif account.role == "release-manager":
                _grant(admin, account.username, "registered_model", "*", "MANAGE")
    return {account.username: account.role for account in accounts}

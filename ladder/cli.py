"""The ``ladder`` command line: one command per stage, ``run`` for the whole pipeline.

Every stage command takes ``--profile`` (a named profile or a YAML path), repeated
``--set dotted.key=value`` overrides and ``--dry-run`` (print the resolved config and its hash,
run nothing). The environment (offline hubs, Prefect and MLflow endpoints) is configured
before any flow module is imported, since Prefect reads its settings at import time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ladder import runtime, services
from ladder.workspace import Workspace

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
services_app = typer.Typer(help="Start, stop and show the local Prefect and MLflow servers.", no_args_is_help=True)
app.add_typer(services_app, name="services")
console = Console()

Profile = Annotated[str, typer.Option("--profile", "-p", help="Profile name (e.g. tiny) or path to a YAML file.")]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a config key: dotted.key=value (repeatable).")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and its hash, run nothing.")]


@app.callback()
def main(
    root: Annotated[str | None, typer.Option("--root", help="Project root (default: $LADDER_ROOT or the cwd).")] = None,
) -> None:
    """ladder: replicate an LLM as one reproducible, orchestrated pipeline."""
    ws = Workspace.from_env(root)
    os.environ["LADDER_ROOT"] = str(ws.root)
    runtime.configure(ws)


def _workspace() -> Workspace:
    return Workspace.from_env()


def _print_config(profile: str, overrides: list[str] | None, sections: list[str] | None) -> None:
    from ladder.config import load
    from ladder.project import ProjectConfig

    cfg = load(ProjectConfig, profile, overrides or [])
    tree = cfg.to_dict()
    shown = {name: tree[name] for name in sections} if sections else tree
    import yaml

    console.print(yaml.safe_dump(shown, sort_keys=True), end="", markup=False)
    console.print(f"# config hash: {cfg.hash()}", markup=False)


def _run_stage(name: str, sections: list[str], dry_run: bool, profile: str, overrides: list[str] | None,
               flow: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    if dry_run:
        _print_config(profile, overrides, sections)
        raise typer.Exit(0)
    started = time.perf_counter()
    try:
        with console.status(f"[bold]{name}[/] running"):
            result = flow(profile=profile, overrides=overrides or [], **kwargs)
    except ValueError as err:
        console.print(f"[red]{name} failed:[/] {err}")
        raise typer.Exit(1) from None
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _show(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    console.print(table)


@services_app.command("up")
def services_up(
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you mean to expose the UIs.")] = "127.0.0.1",
) -> None:
    """Start the Prefect server (:4200) and MLflow tracking server (:5000) and wait until healthy."""
    started = services.up(_workspace(), host=host)
    for svc in started:
        console.print(f"[green]{svc.name}[/] healthy at {svc.ui_url}")


@services_app.command("down")
def services_down() -> None:
    """Stop the servers that `ladder services up` started."""
    stopped = services.down(_workspace())
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@services_app.command("status")
def services_status() -> None:
    """Say which servers answer their health check."""
    for svc in services.services(_workspace()):
        state = "[green]up[/]" if runtime.healthy(svc.health_url) else "[red]down[/]"
        console.print(f"{svc.name}: {state} {svc.ui_url}")


@app.command()
def config(profile: Profile = "tiny", overrides: Overrides = None) -> None:
    """Print the whole resolved config tree of a profile and its hash."""
    _print_config(profile, overrides, None)


@app.command()
def data(profile: Profile = "tiny", overrides: Overrides = None, dry_run: DryRun = False) -> None:
    """Curate the corpus: ingest, normalize, quality gate, dedup, split, version with DVC."""
    from flows.data import data_flow

    result = _run_stage("data", ["data"], dry_run, profile, overrides, data_flow)
    _show("data stage", result)

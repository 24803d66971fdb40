"""The ``ladder`` command line: one command per stage, ``run`` for the whole pipeline.

Every stage command takes ``--profile`` (a named profile or a YAML path), repeated
``--set dotted.key=value`` overrides and ``--dry-run`` (print the resolved config and its hash,
run nothing). The environment (offline hubs, Prefect and MLflow endpoints) is configured
before any flow module is imported, since Prefect reads its settings at import time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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


def _console(file: Any = None) -> Console:
    """A Rich console on ``file`` (stdout by default), 140 columns wide off a terminal.

    Off a terminal (make, CI logs) Rich wraps everything at 80 columns, and the run's summary
    takes twice the lines it needs.
    """
    shown = Console(file=file)
    return shown if shown.is_terminal else Console(file=file, width=140)


console = _console()

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
    # Credentials (a team's servers) before configure: Prefect reads its client settings at import.
    try:
        services.load_secrets(ws)
    except ValueError as err:
        console.print(f"[red]secrets refused:[/] {err}")
        raise typer.Exit(1) from None
    runtime.configure(ws)


def _workspace() -> Workspace:
    return Workspace.from_env()


def _print_config(profile: str, overrides: list[str] | None, sections: list[str] | None) -> None:
    from app.project import ProjectConfig
    from ladder.config import load

    cfg = load(ProjectConfig, profile, overrides or [])
    tree = cfg.to_dict()
    shown = {name: tree[name] for name in sections} if sections else tree
    import yaml

    console.print(yaml.safe_dump(shown, sort_keys=True), end="", markup=False)
    console.print(f"# config hash: {cfg.hash()}", markup=False)


def _run_stage(name: str, sections: list[str], dry_run: bool, profile: str, overrides: list[str] | None,
               flow: Callable[..., Any], **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """The stage's typed result, and the same flattened (with the seconds it took) for the table a person reads."""
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
    shown = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    shown["seconds"] = round(time.perf_counter() - started, 1)
    return result, shown


def _show(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    console.print(table)


@services_app.command("up")
def services_up(
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you mean to expose the UIs.")] = "127.0.0.1",
    auth: Annotated[
        bool, typer.Option("--auth", help="Ask for credentials (MLflow basic-auth, Prefect basic auth); secrets from "
                           "$LADDER_SECRETS or ~/.config/ladder/secrets.env.")
    ] = False,
) -> None:
    """Start the Prefect server (:4200) and MLflow tracking server (:5000) and wait until healthy."""
    try:
        started = services.up(_workspace(), host=host, auth=auth)
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]services up failed:[/] {err}")
        raise typer.Exit(1) from None
    for svc in started:
        console.print(f"[green]{svc.name}[/] healthy at {svc.ui_url}")
    if auth:
        console.print("next: `ladder services accounts` creates the team's accounts", markup=False)


@services_app.command("accounts")
def services_accounts() -> None:
    """Create the team's accounts on the auth-enabled MLflow server and grant each its role (as the admin)."""
    from mlflow.exceptions import MlflowException

    try:
        roles = services.set_up_accounts(runtime.mlflow_server_url(), services.accounts_from_env())
    except (ValueError, MlflowException) as err:
        console.print(f"[red]accounts failed:[/] {err}")
        raise typer.Exit(1) from None
    for username, role in roles.items():
        console.print(f"{username}: {role}", markup=False)


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

    _, shown = _run_stage("data", ["data"], dry_run, profile, overrides, data_flow)
    _show("data stage", shown)


@app.command()
def tokenizer(profile: Profile = "tiny", overrides: Overrides = None, dry_run: DryRun = False) -> None:
    """Train tokenizer candidates, compare them, choose one by rule, write packed shards."""
    from flows.tokenizer import tokenizer_flow
    from tasks.tokenizer.stage import format_table

    _, shown = _run_stage("tokenizer", ["tokenizer"], dry_run, profile, overrides, tokenizer_flow)
    console.print("tokenizer candidates (validation split):", style="bold")
    console.print(format_table(shown.pop("table")), markup=False, highlight=False, soft_wrap=True)
    _show("tokenizer stage", shown)


@app.command()
def scaling(profile: Profile = "tiny", overrides: Overrides = None, dry_run: DryRun = False) -> None:
    """Train the scaling ladder's rungs, fit L(N, D), and predict the target run's loss."""
    from flows.scaling import scaling_flow

    _, shown = _run_stage("scaling", ["scaling", "train"], dry_run, profile, overrides, scaling_flow)
    _show("scaling stage", shown)


@app.command()
def train(profile: Profile = "tiny", overrides: Overrides = None, dry_run: DryRun = False) -> None:
    """Train the target model on the latest packed shards (resumes, rolls back on loss spikes)."""
    from flows.train import train_flow

    _show("train stage", _run_stage("train", ["train"], dry_run, profile, overrides, train_flow)[1])


DeploymentNames = Annotated[
    list[str] | None,
    typer.Option("--name", "-n", help="Only this deployment of infra/prefect.yaml (repeatable; default: all)."),
]


@app.command()
def deploy(
    names: DeploymentNames = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the deployments in this process (no work pool or worker) until Ctrl-C.")
    ] = False,
) -> None:
    """Register the deployments of infra/prefect.yaml with the running Prefect server."""
    from app import deploy as deployments

    try:
        if serve:
            deployments.serve(names)
            return
        registered = deployments.register(_workspace(), names)
    except (ValueError, RuntimeError) as err:
        console.print(f"[red]deploy failed:[/] {err}")
        raise typer.Exit(1) from None
    console.print(f"registered on work pool [bold]{deployments.LOCAL_POOL}[/]: {', '.join(registered)}")
    console.print("start a worker to run them:", markup=False)
    console.print(f"  {deployments.worker_command()}", markup=False, soft_wrap=True)


@app.command("data-version")
def data_version(
    install_hooks: Annotated[
        bool, typer.Option("--install-hooks", help="Also run this after every `git pull`/`git checkout` (git hooks).")
    ] = False,
) -> None:
    """Record the dataset version in data.dvc; a new one emits `ladder.data.updated` (once) to start the pipeline."""
    from app import deploy as deployments

    ws = _workspace()
    try:
        if install_hooks:
            for hook in deployments.install_git_hooks(ws):
                console.print(f"installed {hook}", markup=False)
        version = deployments.record_data_version(ws)
    except ValueError as err:
        console.print(f"[red]data-version failed:[/] {err}")
        raise typer.Exit(1) from None
    if version.emitted:
        console.print(f"dataset {version.md5}: new version, emitted {deployments.DATA_EVENT} (event {version.event_id})")
    else:
        console.print(f"dataset {version.md5}: already recorded, nothing emitted")


@app.command()
def verify(
    stage: Annotated[str | None, typer.Argument(help="Only this stage's artifacts (e.g. tokenizer); default: every stage.")] = None,
) -> None:
    """Re-hash every file of every artifact against its manifest; name each file that differs, exit 1 if any does."""
    from rich.markup import escape

    try:
        checked = _workspace().store().verify(stage)
    except ValueError as err:
        console.print(f"[red]verify failed:[/] {escape(str(err))}")
        raise typer.Exit(1) from None
    # soft_wrap: paths and file names stay whole on one line, for copying and grepping.
    for path, differences in checked.items():
        status = "[red]differs[/]" if differences else "[green]ok[/]"
        console.print(f"{status} {escape(str(path))}", soft_wrap=True)
        for line in differences:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    differing = [path for path, differences in checked.items() if differences]
    console.print(f"artifacts checked {len(checked)}, {len(differing)} differ from their manifests")
    if differing:
        console.print("delete a differing artifact's directory to rebuild it on the next run", markup=False)
        raise typer.Exit(1)


class _RichDisplay:
    """Stage-by-stage progress bars: a spinner while a stage runs, its time and outcome when done."""

    def __init__(self, progress_bar: Any) -> None:
        self.bar = progress_bar
        self.tasks: dict[str, Any] = {}

    def start(self, stage: str) -> None:
        self.tasks[stage] = self.bar.add_task(stage, total=1)

    def finish(self, stage: str, summary: dict[str, Any], seconds: float) -> None:
        task = self.tasks.get(stage)
        if task is not None:
            self.bar.update(task, completed=1, description=f"{stage} [dim]{seconds:.0f}s[/]")
        brief = ", ".join(f"{k}={v}" for k, v in summary.items())
        self.bar.console.print(f"[green]done[/] {stage}: {brief}", highlight=False)


@app.command()
def run(
    profile: Profile = "tiny",
    overrides: Overrides = None,
    dry_run: DryRun = False,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="Train this dataset version (a DVC md5 ending in .dir, pulled from the remote if "
                     "not here) instead of curating the configured corpus."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print every library's log here instead of only into the log file.")
    ] = False,
) -> None:
    """Run the whole pipeline on the configured corpus (the example corpus by default), or on one dataset version."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from flows.pipeline import pipeline_flow
    from ladder import progress

    if dry_run:
        _print_config(profile, overrides, None)
        raise typer.Exit(0)
    started = time.perf_counter()
    log_file = _workspace().state / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    output = nullcontext(None) if verbose else progress.logged_to(log_file)
    try:
        with output as terminal:
            shown = console if terminal is None else _console(terminal)
            bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=shown)
            try:
                with bar, progress.showing(_RichDisplay(bar)):
                    summary = pipeline_flow(profile=profile, overrides=overrides or [], dataset_md5=dataset)
            except ValueError as err:
                shown.print(f"[red]pipeline stopped:[/] {err}")
                raise typer.Exit(1) from None
    except BaseException:  # a stop or a crash: the log holds what led to it
        if not verbose:
            console.print(f"library logs: {log_file}", markup=False, highlight=False, soft_wrap=True)
        raise
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary.update({f"{name} UI": url for name, url in services.urls().items()})
    _show("ladder pipeline summary", summary)
    if not verbose:
        console.print(f"library logs: {log_file} (--verbose prints them here)", markup=False, highlight=False, soft_wrap=True)
        # Prefect stops its temporary server at exit and says so: the summary stays the last word.
        logging.getLogger("prefect").setLevel(logging.WARNING)


@app.command()
def evals(
    profile: Profile = "tiny",
    overrides: Overrides = None,
    dry_run: DryRun = False,
    model_dir: Annotated[
        str | None, typer.Option("--model-dir", help="HF checkpoint to evaluate (default: the latest pretrained model).")
    ] = None,
    training_run: Annotated[
        str | None, typer.Option("--training-run", help="MLflow run that trained it (default: found from the train artifact).")
    ] = None,
) -> None:
    """Evaluate a model on the held-out suite (lm-eval), gate it against the champion, register it with its lineage."""
    from flows.evals import evals_flow

    result, shown = _run_stage(
        "evals", ["evals"], dry_run, profile, overrides, evals_flow, model_dir=model_dir, training_run_id=training_run
    )
    table = Table(title=f"eval table: {result.registered_model} version {result.version}")
    table.add_column("metric", overflow="fold")
    for column in ("value", "stderr", "better", "items"):
        table.add_column(column, justify="right")
    for row in result.metrics:
        stderr = "—" if row["stderr"] is None else f"{row['stderr']:.4f}"
        better = "higher" if row["higher_is_better"] else "lower"
        table.add_row(row["metric"], f"{row['value']:.4f}", stderr, better, str(row["items"]))
    console.print(table)
    colour = "green" if result.decision == "promoted" else "yellow"
    console.print(f"[{colour}]{result.line()}[/]")
    for reason in result.reasons:
        console.print(f"  {reason}", markup=False)
    _show("evals stage", {k: shown[k] for k in ("eval_run_id", "suite_version", "contaminated_items", "seconds")})


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="NAME@ALIAS (e.g. ladder-tiny@champion) or NAME/VERSION.")],
) -> None:
    """Print where a registered model version came from: data, tokenizer, ladder, training, alignment, eval, flow run."""
    from ladder.lineage import render
    from tasks.evals import lineage as chain
    from tasks.evals import registry

    # MLflow's download progress bar would land among the lines printed below.
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    try:
        found = registry.resolve(ref)
    except ValueError as err:
        console.print(f"[red]lineage failed:[/] {err}")
        raise typer.Exit(1) from None
    _show(ref, registry.version_summary(found, registry.aliases_of(found.name, found.version)))
    # One unwrapped line per link, so ids and URLs stay whole for copying and grepping.
    console.print("[bold]lineage[/] (artifact version: config hash, code fingerprint, MLflow run, Prefect flow run)")
    for line in render(chain.load(found.run_id)):
        console.print(f"  {line}", markup=False, soft_wrap=True)
    console.print("[bold]gate reasons[/]")
    for reason in registry.reasons(found):
        console.print(f"  {reason}", markup=False, soft_wrap=True)
    suite_version = found.tags.get(registry.SUITE_TAG)
    if suite_version:
        import shlex
        from pathlib import Path

        from tasks.evals.suite import STAGE, SUITE_TAG_ALL, TASKS_DIR

        include = _workspace().artifacts / STAGE / suite_version / TASKS_DIR
        command = registry.lm_eval_command(Path("DIR/model"), Path("DIR/components/tokenizer"), include, [SUITE_TAG_ALL])
        console.print(
            f"[bold]score it with the plain harness[/] (DIR: mlflow.artifacts.download_artifacts"
            f"(\"models:/{found.name}/{found.version}\"))",
            soft_wrap=True,
        )
        console.print(f"  {shlex.join(command)}", markup=False, soft_wrap=True)


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="NAME/VERSION (or NAME@ALIAS) to make the champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why this version should serve; recorded on the version.")],
    override_gate: Annotated[
        bool, typer.Option("--override-gate", help="Promote a version the release gate rejected; recorded on the version.")
    ] = False,
) -> None:
    """Promote a model version to champion by hand (a rollback, or an override of the gate)."""
    from mlflow.exceptions import MlflowException

    from tasks.evals import registry

    try:
        found = registry.resolve(ref)
        registry.promote_manually(found.name, found.version, reason, override_gate)
    except (ValueError, PermissionError, MlflowException) as err:
        console.print(f"[red]promote failed:[/] {err}")
        raise typer.Exit(1) from None
    console.print(f"{found.name} version {found.version} is now @{registry.CHAMPION} (manual: {reason})", markup=False)


@app.command()
def align(
    profile: Profile = "tiny",
    overrides: Overrides = None,
    dry_run: DryRun = False,
    base_model_dir: Annotated[
        str | None,
        typer.Option("--base-model-dir", help="HF checkpoint to align (default: the registry's champion, else the latest pretrained model)."),
    ] = None,
) -> None:
    """Align a base model: SFT on instruction data, DPO on its own samples; print the gains and the alignment tax."""
    from flows.align import align_flow

    result, shown = _run_stage(
        "align", ["align", "evals"], dry_run, profile, overrides, align_flow, base_model_dir=base_model_dir
    )
    rows = result.table
    # Metrics down, models across: the table stays readable however many metrics the suite has.
    table = Table(title="alignment: held-out instruction tasks (instruct/...) and the eval suite")
    table.add_column("metric")
    for row in rows:
        table.add_column(row["model"], justify="right")
    for metric in (m for m in rows[0] if m != "model"):
        table.add_row(metric, *(f"{row[metric]:.4f}" for row in rows))
    console.print(table)
    console.print(f"DPO reward margin on held-out pairs: {result.reward_margin:+.4f} "
                  f"({result.reward_margin_accuracy:.0%} of pairs ranked right)", markup=False)
    colour = "green" if result.passed_tax_bound else "red"
    console.print(f"[{colour}]alignment tax {'within' if result.passed_tax_bound else 'beyond'} the gate's bound[/]")
    for model, lines in result.tax_checks.items():
        for line in lines:
            console.print(f"  {model}: {line}", markup=False)
    if result.registry:
        console.print(f"registry: {result.registry.line()}", markup=False)
        for reason in result.registry.reasons:
            console.print(f"  {reason}", markup=False)
    _show("align stage", {k: shown[k] for k in ("sft_model_dir", "dpo_model_dir", "mlflow_run_ids", "seconds")})

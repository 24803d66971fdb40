"""Lineage from the manifests: the exact chain of artifact versions behind an artifact.

Every manifest names the versions of its inputs, and versions are hashes unique across
stages, so the chain is a walk: from a model's artifact through each input that is itself an
artifact, down to values that are not (a dataset md5, a raw corpus hash, a split name). Each
artifact on the way is reported with its config hash, code fingerprint, git commit and the
MLflow run and Prefect flow run that produced it (found by the run's ``ladder.artifacts`` tag,
not by "the latest run of that stage"). A value the framework cannot open itself (a dataset
md5, which the data stage maps to its artifact) is expanded by the caller's ``expand``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ladder.artifacts import MANIFEST, Artifact, ArtifactStore

Node = dict[str, Any]
# (input name, value) -> the node that value stands for, or None when it is a plain value.
Expand = Callable[[str, str], Node | None]
# artifact version -> {"mlflow_run": ..., "prefect_flow_run": ...} of the run that produced it.
Runs = Callable[[str], dict[str, str]]


def find(store: ArtifactStore, version: str) -> Artifact | None:
    """The artifact of that version, whatever its stage (versions hash the stage name, so at most one)."""
    for manifest in store.root.glob(f"*/{version}/{MANIFEST}"):
        return store.lookup(manifest.parent.parent.name, version)
    return None


def containing(store: ArtifactStore, path: str) -> Artifact | None:
    """The artifact a path lies inside (a model directory inside a training artifact), or None."""
    resolved = Path(path).resolve()
    root = store.root.resolve()
    if root not in resolved.parents:
        return None
    stage, version = resolved.relative_to(root).parts[:2]
    return store.lookup(stage, version)


def artifact_node(artifact: Artifact, runs: Runs) -> Node:
    """One artifact's own facts, without its inputs."""
    manifest = artifact.manifest
    return {
        "stage": artifact.stage,
        "version": artifact.version,
        "config_hash": manifest.get("config_hash"),
        "code": manifest.get("code", {}).get("fingerprint"),
        "git_commit": manifest.get("git_commit"),
        **runs(artifact.version),
    }


def walk(
    store: ArtifactStore, artifact: Artifact, runs: Runs, expand: Expand | None = None, seen: dict[str, Node] | None = None
) -> Node:
    """The tree of ``artifact`` and everything it was built from.

    An artifact reached by several branches (the tokenizer feeds shards, training and the
    scaling fit) is looked up and its run searched for once: ``seen`` holds its node.
    """
    seen = {} if seen is None else seen
    if artifact.version in seen:
        return seen[artifact.version]
    node = artifact_node(artifact, runs)
    inputs: dict[str, Node] = {}
    for name, value in sorted(artifact.manifest.get("inputs", {}).items()):
        upstream = find(store, str(value))
        if upstream is not None:
            inputs[name] = walk(store, upstream, runs, expand, seen)
        else:
            inputs[name] = (expand(name, str(value)) if expand else None) or {"value": value}
    node["inputs"] = inputs
    seen[artifact.version] = node
    return node


# What every artifact on the chain must name; a link without one is reported by `missing`.
FIELDS = ("config_hash", "code", "mlflow_run", "prefect_flow_run")


def nodes(tree: Node) -> Iterator[Node]:
    """Every node of a tree, depth first."""
    yield tree
    for child in tree.get("inputs", {}).values():
        yield from nodes(child)


def missing(tree: Node) -> list[str]:
    """``stage version: field`` for every artifact link that is not known (no run found, no fingerprint)."""
    gaps = []
    for node in nodes(tree):
        if "stage" in node:
            gaps += [f"{node['stage']} {node['version']}: {key}" for key in FIELDS if not node.get(key)]
    return gaps


def render(tree: Node, name: str = "", indent: str = "", shown: set[str] | None = None) -> list[str]:
    """The tree as indented lines: ``input: stage version (config, code, runs)`` or ``input: value``.

    The chain is a graph (the dataset feeds most stages): an artifact or dataset already shown
    is named again with ``(as above)`` instead of its whole subtree.
    """
    shown = set() if shown is None else shown
    label = f"{name}: " if name else ""
    key = tree.get("version") or (tree.get("value") if tree.get("inputs") else None)
    if key is not None and key in shown:
        head = f"{tree['stage']} {key}" if "stage" in tree else str(key)
        return [f"{indent}{label}{head} (as above)"]
    if key is not None:
        shown.add(key)
    if "stage" not in tree:
        extra = "".join(f", {k} {v}" for k, v in sorted(tree.items()) if k not in ("value", "inputs"))
        lines = [f"{indent}{label}{tree.get('value', '')}{extra}"]
    else:
        facts = ", ".join(f"{key} {tree.get(key) or 'unknown'}" for key in FIELDS)
        lines = [f"{indent}{label}{tree['stage']} {tree['version']} ({facts})"]
    for child_name, child in tree.get("inputs", {}).items():
        lines += render(child, child_name, indent + "  ", shown)
    return lines

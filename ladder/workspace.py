"""Where a ladder project keeps its state: curated data, artifacts, tracking stores, services.

One root directory (the repository by default, ``LADDER_ROOT`` or ``--root`` otherwise) holds
``data/`` (tracked by DVC through ``data.dvc``) and ``.ladder/`` (ignored by git): the artifact
store, the MLflow SQLite store and artifact root, Prefect's home, the DVC local remote and
the services' pid and log files. Servers and in-process clients read the same files, so a run
made without the servers shows in their UIs afterwards.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ladder.artifacts import ArtifactStore


@dataclass(frozen=True)
class Workspace:
    """Paths of one ladder project root."""

    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> "Workspace":
        chosen = root or os.environ.get("LADDER_ROOT") or Path.cwd()
        return cls(Path(chosen).resolve())

    @property
    def state(self) -> Path:
        return self.root / ".ladder"

    @property
    def artifacts(self) -> Path:
        return self.state / "artifacts"

    def store(self) -> ArtifactStore:
        """The artifact store of this root; manifests it writes record the git commit for people to read."""
        return ArtifactStore(self.artifacts, git_commit=self.git_commit())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_dvc(self) -> Path:
        return self.root / "data.dvc"

    @property
    def dvc_remote(self) -> Path:
        return self.state / "dvc-remote"

    @property
    def mlflow_dir(self) -> Path:
        return self.state / "mlflow"

    @property
    def mlflow_db_uri(self) -> str:
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def services(self) -> Path:
        return self.state / "services"

    def git_commit(self) -> str:
        """HEAD commit of the root's git repository, ``+dirty`` when the tree has changes."""
        try:
            head = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=self.root, capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=self.root, capture_output=True, text=True, check=True,
            ).stdout.strip()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return "unknown"
        return head + ("+dirty" if dirty else "")

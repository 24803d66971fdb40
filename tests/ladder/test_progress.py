"""What a person watching `ladder run` sees: the progress, not the libraries' logs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# A process of its own, as `ladder run` is: pytest's capture would stand in for its streams.
RUN = textwrap.dedent("""
    import logging, subprocess, sys
    from pathlib import Path
    from ladder import progress

    library = logging.getLogger("library")
    library.addHandler(logging.StreamHandler(sys.stderr))  # bound at import, as Prefect's and MLflow's are
    with progress.logged_to(Path(sys.argv[1])) as terminal:
        print("a library prints")
        library.warning("a library warns")
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
        terminal.write("done data\\n")
    print("the summary")
""")


def test_library_output_and_child_processes_go_to_the_log_and_the_terminal_keeps_the_progress(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    shown = subprocess.run([sys.executable, "-c", RUN, str(log)], capture_output=True, text=True, check=True)

    assert (shown.stdout, shown.stderr) == ("done data\nthe summary\n", "")
    logged = log.read_text()
    for line in ("a library prints", "a library warns", "child out", "child err"):
        assert line in logged

"""One-process training runs forked from a server that has already imported what training imports.

A fresh interpreter spends 4.5-6 s of one core importing torch, transformers, DeepSpeed (pulled
in by ``save_pretrained``), MLflow and matplotlib before its first step, and a ladder starts a
process for every rung and branch (the suite, dozens). The server pays that once per parent
process; each run is then a ``fork`` of it (milliseconds), still a process of its own, with its
own environment, working directory, thread count and log, so a run is as isolated as before and
a kill of it loses what a kill of a fresh process loses. Only where there is no CUDA: a process
that has asked the driver for devices (the imports do) cannot hand CUDA to its forks.

The server (``python -m tasks.train.forkserver SOCKET``) listens on a Unix socket. Per request it
forks a waiter, which forks the run, reports the run's pid, waits for it and reports its exit
code: the server itself stays single-threaded and never waits, so it can fork at any time. A
waiter whose client goes away (the parent died or gave up) kills its run. The server exits when
its stdin, a pipe from the parent, closes.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# What a training process imports, in the order it does: its modules, then transformers' Llama
# (models.llama), MLflow (metrics), DeepSpeed (engine, and accelerate's unwrap in save_pretrained)
# and matplotlib (the loss curve).
PRELOAD = (
    "tasks.train.launch",
    "tasks.train.loop",
    "transformers.models.llama.modeling_llama",
    "mlflow",
    "deepspeed",
    "matplotlib.pyplot",
)
START_TIMEOUT_S = 120.0


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _run(request: dict[str, Any]) -> int:
    """In the forked run: take the request's environment, directory and log, then train."""
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd, target in ((devnull, 0), (log, 1), (log, 2)):
        os.dup2(fd, target)
    os.close(devnull)
    os.close(log)
    import torch

    # torch sized its thread pool from the server's environment when it was imported.
    torch.set_num_threads(request["threads"])
    from tasks.train.launch import main

    try:
        return main(request["argv"])
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _wait(conn: socket.socket) -> None:
    """In the waiter: fork the run, report its pid and, once it ends, its exit code."""
    request = json.loads(conn.makefile("rb").readline())
    pid = os.fork()
    if pid == 0:
        conn.close()
        code = 1
        try:
            code = _run(request)
        finally:
            os._exit(code)
    _send(conn, {"pid": pid})
    # The client sends nothing more: its end readable means it is gone (the parent died or gave
    # up), and nobody will read what the run makes.
    ready, _, _ = select.select([os.pidfd_open(pid), conn], [], [])
    if conn in ready:
        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    try:
        _send(conn, {"code": os.waitstatus_to_exitcode(status)})
    except OSError:
        pass


def serve(path: str) -> None:
    """Import ``PRELOAD``, listen on ``path``, fork a waiter per connection until stdin closes."""
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # the path appears only once the server accepts
    # Waiters are reaped by the kernel: the server never blocks in waitpid.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            return
        if listener in ready:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    _wait(conn)
                finally:
                    os._exit(0)
            conn.close()


class ForkServer:
    """The parent's handle on its server, started on first use and shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def _socket(self, cwd: Path, env: dict[str, str]) -> str:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                assert self._dir is not None
                return os.path.join(self._dir.name, "socket")
            self._dir = tempfile.TemporaryDirectory(prefix="ladder-forkserver-")
            path = os.path.join(self._dir.name, "socket")
            server_log = Path(self._dir.name) / "server.log"
            with server_log.open("wb") as out:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "tasks.train.forkserver", path], cwd=cwd, env=env,
                    stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not os.path.exists(path):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self._proc.kill()
                    log = server_log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the training fork server did not start (exit {self._proc.wait()}):\n{log}")
                time.sleep(0.05)
            return path

    def run(self, argv: list[str], *, cwd: Path, env: dict[str, str], log: Path, threads: int) -> int:
        """Run ``python -m tasks.train.launch ARGV`` as a fork of the server, its output appended to
        ``log``; its exit code, negative for the signal that killed it, as ``Popen.returncode``."""
        path = self._socket(cwd, env)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            _send(conn, {"argv": argv, "cwd": str(cwd), "env": env, "log": str(log), "threads": threads})
            replies = conn.makefile("rb")
            pid = json.loads(replies.readline())["pid"]
            try:
                line = replies.readline()
            except BaseException:
                os.kill(pid, signal.SIGTERM)
                raise
            if not line:
                raise RuntimeError(f"the training fork server's waiter for run {pid} died: see {log}")
            return int(json.loads(line)["code"])


SERVER = ForkServer()


if __name__ == "__main__":
    serve(sys.argv[1])

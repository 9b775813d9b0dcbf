"""Child processes of the local harness: free loopback ports, lifetime, readiness, logs.

Why it exists: the control plane, the node, the operator, the audit collector and the servers the
tests and benchmarks start are all child processes on loopback. Each must die with its parent (a
crashed test never leaves one behind), log to a file a failure can quote, be waited for until it
answers, and be stopped with a grace period; this is that one way, shared by all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when its parent dies (Linux), so a crashed test or
    demo never leaves a process running."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` (in `cwd`) with stdout and stderr appended to `log_path`, dying with its
    parent."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
            cwd=cwd,
            preexec_fn=die_with_parent,
        )


def answers(url: str) -> bool:
    """Whether `url` (on loopback) answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    what: str,
    log_path: Path,
    timeout: float,
    grace: float = 20.0,
) -> None:
    """Poll `ready` until it holds; if `proc` exits first, or `timeout` passes (then `proc` is
    stopped), raise with the log's tail so the failure says why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log_path)}")
        if ready():
            return
        time.sleep(0.1)
    stop_processes([(what, proc)], grace)
    raise TimeoutError(f"{what} was not ready after {timeout}s:\n{log_tail(log_path)}")


def stop_processes(procs: list[tuple[str, subprocess.Popen[bytes]]], grace: float) -> None:
    """Stop `procs` newest first: all get SIGTERM at once, then each `grace` seconds before
    SIGKILL; the list is emptied. Shared by the control plane, the node and the processes."""
    for _, proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for _, proc in reversed(procs):
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    procs.clear()


def log_tail(log_path: Path, lines: int = 40) -> str:
    if not log_path.exists():
        return "(no log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])

"""Real `mlflow server` and `mlflow models serve` subprocesses on free loopback ports, for the tests.

Each server runs in its own session (process group), is polled until it answers, and is stopped at teardown by
signalling that group: SIGTERM, then SIGKILL for whatever is left, so no worker or helper process outlives it.
PATH starts with the venv's bin folder because mlflow execs `uvicorn` (and `mlflow`) by name.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from conftest import free_port

BIN = Path(sys.executable).parent


def child_env(**extra) -> dict[str, str]:
    """The test process's environment, with the venv's bin first on PATH and no telemetry."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the server and all its descendants (VmRSS from /proc)."""
        return tree_rss_bytes(self.proc.pid)


@contextlib.contextmanager
def running(cmd: list[str], *, ready: str, port: int, env: dict, log: Path, cwd: str | os.PathLike | None = None,
            timeout: float = 120.0):
    """Start `cmd` in its own process group, wait until GET `ready` answers 200, yield a Server, stop it."""
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = Server(proc, base, log)
    try:
        wait_ready(server, ready, timeout)
        yield server
    finally:
        stop(proc)


def wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(server.base + path, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if server.proc.poll() is not None:
            raise AssertionError(f"{server.proc.args[:4]} exited with {server.proc.returncode}:\n{server.log_tail()}")
        time.sleep(0.25)
    raise AssertionError(f"no answer from {server.base}{path} in {timeout:.0f} s:\n{server.log_tail()}")


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL the group (stragglers included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def tracking_server(folder: Path, *, workers: int = 1, **env):
    """`mlflow server` on SQLite with proxied artifacts (clients upload and download through the server).

    The server's job runner (GenAI scorer jobs, unused here) is switched off: it would start several
    Huey consumer processes of ~240 MB each on a 2-core test machine."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
           "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    return running(cmd, ready="/health", port=port, log=folder / "server.log", cwd=folder,
                   env=child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **env))


def model_server(model_uri: str, tracking_uri: str, folder: Path, **env):
    """`mlflow models serve` of `model_uri` in this environment (--env-manager local)."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    return running(cmd, ready="/ping", port=port, log=folder / "serve.log", cwd=folder,
                   env=child_env(MLFLOW_TRACKING_URI=tracking_uri, **env))


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and all its descendants, summed."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total

"""Starts and stops the BentoML upstream (bentoml_service.py) as a subprocess, for tests.

    with bentoml_upstream(model_store) as upstream:
        httpx.post(f"{upstream.base_url}/generate/image", json={"prompt": "a cat"})

`bentoml serve` runs from its own virtual environment (.venv-bentoml, built by make), on
127.0.0.1 and a free port or a fixed one (an upstream that is down at first and comes back:
`BentoMLProcess(store, port=p)` then `.start()` / `.stop()` / `.start()` again on that port).
Its output goes to a log file; `log_tail()` gives the end of it for a failure message.

BentoML's arbiter starts its workers in sessions of their own, and a worker outlives a killed
arbiter (it keeps the listening socket and goes on answering), so stop() and kill() end the
arbiter's whole process tree, found through /proc (Linux), not just its process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BENTOML_VENV = Path(os.environ.get("BENTOML_VENV", REPO / ".venv-bentoml"))
SERVICE = "bentoml_service:GenserveUpstream"
HOST = "127.0.0.1"
INIT_FAILED = "Initializing service error"  # what BentoML logs when __init__ raises


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class UpstreamNotReady(RuntimeError):
    pass


class BentoMLProcess:
    """One `bentoml serve` of the upstream; start() waits for /readyz, stop() ends it."""

    def __init__(
        self,
        model_store: str | Path,
        *,
        port: int | None = None,
        log_path: str | Path | None = None,
        load: str = "image,text",
        faults: bool = True,
        threads: int | None = 1,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.model_store = Path(model_store).resolve()
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bentoml-upstream-"))
        self.log_path = Path(log_path) if log_path else self.workdir / "bentoml.log"
        self.load = load
        self.faults = faults
        # One torch thread: on a small machine shared with genserve and the tests, two threads
        # fall into OpenMP barrier stalls (the tiny SD pipeline, 64x64 x 10 steps, measured at
        # load 7 on 2 cores: 1-17 s with 2 threads, 0.25-1 s with 1). None: torch's default.
        self.threads = threads
        self.extra_env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None
        self._log_start = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        bentoml = BENTOML_VENV / "bin" / "bentoml"
        if not bentoml.exists():
            raise FileNotFoundError(f"{bentoml}: build it with `make bentoml-venv`")
        return [
            str(bentoml), "serve", SERVICE, "--working-dir", str(HERE),
            "--host", HOST, "--port", str(self.port),
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            # genserve's own venv must not leak into BentoML's interpreter
            if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        env.update(
            BENTO_UPSTREAM_MODEL_STORE=str(self.model_store),
            BENTO_UPSTREAM_LOAD=self.load,
            BENTO_UPSTREAM_FAULTS="1" if self.faults else "0",
            BENTO_UPSTREAM_THREADS=str(self.threads or ""),
            BENTOML_HOME=str(self.workdir / "bentoml-home"),
            BENTOML_DO_NOT_TRACK="true",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> None:
        if self.running():
            raise RuntimeError("already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"\n=== start {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=HERE,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends its workers too
            )
        if wait:
            self.wait_ready()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout_s: float | None = None) -> float:
        """Polls /readyz until 200; raises UpstreamNotReady (with the log's end) otherwise."""
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + timeout_s
        last = "no answer"
        with httpx.Client(timeout=httpx.Timeout(2.0)) as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise UpstreamNotReady(
                        f"bentoml serve exited ({code}) before ready\n{self.log_tail()}"
                    )
                if INIT_FAILED in self._log_since_start():
                    # BentoML's arbiter restarts a worker whose __init__ failed, forever
                    self.stop()
                    raise UpstreamNotReady(f"the service failed to load\n{self.log_tail()}")
                try:
                    answer = client.get(f"{self.base_url}/readyz")
                    if answer.status_code == 200:
                        self.ready_after_s = time.monotonic() - started
                        return self.ready_after_s
                    last = f"HTTP {answer.status_code}"
                except httpx.HTTPError as error:
                    last = repr(error)
                time.sleep(0.25)
        self.stop()
        raise UpstreamNotReady(
            f"{self.base_url}/readyz not ready after {timeout_s:.0f} s ({last})\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM to the arbiter (it drains and stops its workers), SIGKILL to whatever of
        its tree is left after grace_s. Returns the arbiter's exit code."""
        process = self.process
        if process is None:
            return None
        tree = _descendants(process.pid)
        if process.poll() is None:
            _signal([(process.pid, _start_time(process.pid))], signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal([(process.pid, _start_time(process.pid)), *tree], signal.SIGKILL)
                process.wait(grace_s)
        _wait_gone(tree, grace_s)
        _signal(tree, signal.SIGKILL)
        self.process = None
        self._clean()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL at once to the arbiter and its workers: the upstream dies mid-request."""
        process = self.process
        if process is None:
            return
        tree = _descendants(process.pid)
        _signal([(process.pid, _start_time(process.pid)), *tree], signal.SIGKILL)
        process.wait(10)
        _wait_gone(tree, 10)
        self.process = None
        self._clean()

    def _clean(self) -> None:
        """Removes BentoML's home (its own scratch), and the folder when the log is elsewhere."""
        shutil.rmtree(self.workdir / "bentoml-home", ignore_errors=True)
        if self.workdir not in self.log_path.resolve().parents:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _log_since_start(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(text.splitlines()[-lines:])


Proc = tuple[int, int | None]  # a process id and its start time, against reuse of the id


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended
        return None
    return int(fields[19])  # field 22 of stat, starttime


def _descendants(root: int) -> list[Proc]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[Proc] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append((pid, _start_time(pid)))
        todo.extend(children.get(pid, []))
    return found


def _alive(proc: Proc) -> bool:
    pid, started = proc
    return started is not None and _start_time(pid) == started


def _signal(procs: list[Proc], signum: int) -> None:
    for proc in procs:
        if _alive(proc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc[0], signum)


def _wait_gone(procs: list[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def bentoml_upstream(
    model_store: str | Path,
    *,
    port: int | None = None,
    log_path: str | Path | None = None,
    load: str = "image,text",
    faults: bool = True,
    threads: int | None = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 180.0,
) -> Iterator[BentoMLProcess]:
    """A started, ready upstream; stopped on the way out."""
    upstream = BentoMLProcess(
        model_store,
        port=port,
        log_path=log_path,
        load=load,
        faults=faults,
        threads=threads,
        env=env,
        ready_timeout_s=ready_timeout_s,
    )
    try:
        upstream.start()
        yield upstream
    finally:
        upstream.stop()

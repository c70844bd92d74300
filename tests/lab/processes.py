"""Supervised child processes: started, restarted with back-off, stopped, never orphaned.

A process that exits is started again after a back-off of 0.5 s doubling to 10 s, reset once
it has stayed up for 30 s (``restart=False`` leaves it down). Each child gets
``PR_SET_PDEATHSIG`` = SIGKILL, so nothing outlives a lab whose Python process dies, and its
own process group, so that Ctrl-C reaches the lab only. Output goes to ``<logs>/<name>.log``.

``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process
(prctl(2)): a child forked by a short-lived thread (a pytest fixture's, a ``ThreadPool``'s)
would be killed when that thread ends. So every child is forked by the supervisor's own
thread, which lives until :meth:`Supervisor.stop` has ended every child.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import pathlib
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

__all__ = ["SupervisedProcess", "Supervisor", "die_with_parent"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: SIGKILL this child when its parent dies; a new process group."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgid(0, 0)


@dataclasses.dataclass
class SupervisedProcess:
    """A child process the supervisor keeps running (see the module doc)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    restart: bool = True
    cwd: pathlib.Path | None = None
    log_path: pathlib.Path | None = None
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    failures_in_a_row: int = 0
    exit_codes: list[int] = dataclasses.field(default_factory=list)
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the current run, or ``None`` when not running."""
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the current run (e.g. SIGKILL to test the restart)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signum)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Supervisor:
    """Starts, restarts and stops named child processes (see the module doc)."""

    def __init__(self, logs: pathlib.Path, on_change: Callable[[], None] | None = None) -> None:
        self.logs = logs
        self.processes: dict[str, SupervisedProcess] = {}
        self._on_change = on_change
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        # spawn requests for the supervisor thread: (process, done, error box)
        self._spawns: queue.Queue[
            tuple[SupervisedProcess, threading.Event, list[BaseException]]
        ] = queue.Queue()
        self._thread = threading.Thread(target=self._supervise, name="lab-supervisor", daemon=True)
        self._thread.start()

    def add(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        restart: bool = True,
        cwd: pathlib.Path | None = None,
    ) -> SupervisedProcess:
        """Start ``argv`` as the supervised process ``name`` with exactly ``env``.

        Raises:
            ValueError: a process with that name exists already, or ``argv`` is empty.
        """
        if not argv:
            raise ValueError(f"process {name!r}: argv must not be empty")
        with self._lock:
            if name in self.processes:
                raise ValueError(f"a process named {name!r} is already supervised")
            proc = SupervisedProcess(
                name=name,
                argv=list(argv),
                env=dict(env),
                restart=restart,
                cwd=cwd,
                log_path=self.logs / f"{name}.log",
            )
            self.processes[name] = proc
        try:
            self._spawn_in_supervisor(proc)
        except BaseException:
            with self._lock:
                self.processes.pop(name, None)
            raise
        return proc

    def _spawn_in_supervisor(self, proc: SupervisedProcess) -> None:
        """Fork ``proc`` from the supervisor thread (see the module doc) and wait for it."""
        if self._stopping.is_set() or not self._thread.is_alive():
            raise RuntimeError(f"process {proc.name!r}: the supervisor is stopped")
        done, errors = threading.Event(), []
        self._spawns.put((proc, done, errors))
        if not done.wait(60):
            raise RuntimeError(f"process {proc.name!r}: the supervisor did not start it in 60 s")
        if errors:
            raise errors[0]

    def remove(self, name: str, grace: float = 10.0) -> None:
        """Stop one process for good (SIGTERM, SIGKILL after ``grace`` s)."""
        with self._lock:
            proc = self.processes.pop(name, None)
        if proc is not None:
            self._stop_all([proc], grace)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process in reverse start order: SIGTERM, then SIGKILL after ``grace``.

        The processes end first, the supervisor thread (their parent thread) last.
        """
        with self._lock:
            procs = list(reversed(self.processes.values()))
            for proc in procs:
                proc.restart = False
        self._stop_all(procs, grace)
        self._stopping.set()
        self._thread.join(5)

    @staticmethod
    def _stop_all(procs: Sequence[SupervisedProcess], grace: float) -> None:
        for proc in procs:
            proc.restart = False
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            if proc.popen is not None:
                try:
                    proc.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.popen.wait(5)
            if proc._log is not None:
                proc._log.close()
                proc._log = None

    def _spawn(self, proc: SupervisedProcess) -> None:
        if proc.log_path is not None and proc._log is None:
            proc.log_path.parent.mkdir(parents=True, exist_ok=True)
            proc._log = open(proc.log_path, "ab")  # noqa: SIM115 - kept open across restarts
        if proc._log is not None:
            proc._log.write(
                f"--- lab: starting {proc.name} (run {proc.restarts + 1}) ---\n".encode()
            )
            proc._log.flush()
        proc.popen = subprocess.Popen(
            proc.argv,
            env=proc.env,
            cwd=proc.cwd,
            stdin=subprocess.DEVNULL,
            stdout=proc._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        proc.started_at = time.monotonic()
        logger.info("lab: started %s (pid %s)", proc.name, proc.popen.pid)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                proc, done, errors = self._spawns.get(timeout=0.1)
            except queue.Empty:
                pass
            else:
                try:
                    with self._lock:
                        self._spawn(proc)
                except BaseException as exc:  # handed to the caller of add()
                    errors.append(exc)
                finally:
                    done.set()
            self._restart_exited()
        # refuse what is still queued: nobody forks once the supervisor is gone
        while not self._spawns.empty():
            _, done, errors = self._spawns.get_nowait()
            errors.append(RuntimeError("the supervisor is stopped"))
            done.set()

    def _restart_exited(self) -> None:
        changed = False
        with self._lock:
            now = time.monotonic()
            for proc in self.processes.values():
                if proc.popen is None or proc.popen.poll() is None or not proc.restart:
                    continue
                if not proc.next_start:  # just noticed the exit
                    code = proc.popen.returncode
                    proc.exit_codes.append(code)
                    ran = now - proc.started_at
                    proc.failures_in_a_row = 0 if ran >= 30 else proc.failures_in_a_row + 1
                    delay = min(0.5 * 2 ** max(proc.failures_in_a_row - 1, 0), 10.0)
                    proc.next_start = now + delay
                    logger.warning(
                        "lab: %s exited with %s after %.1f s; restarting in %.1f s",
                        proc.name,
                        code,
                        ran,
                        delay,
                    )
                if now >= proc.next_start:
                    proc.restarts += 1
                    proc.next_start = 0.0
                    self._spawn(proc)
                    changed = True
        if changed and self._on_change is not None:
            with contextlib.suppress(OSError):
                self._on_change()


def _signal_group(proc: SupervisedProcess, signum: int) -> None:
    if proc.popen is None or proc.popen.poll() is not None:
        return
    try:
        os.killpg(proc.popen.pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signum)

"""Users' reward functions, run outside the trainer: the sandbox client.

``Sandbox.start(functions, limits)`` starts :mod:`.sandbox_host` as a separate process
and returns a handle whose :meth:`Sandbox.rule` gives one batch function per user rule
(``score(prompts, completions, **columns) -> list[float]``).

What the user's code gets, and does not (the *limits* of the sandbox):

- **another user**: when the trainer runs as root the host drops to ``nobody``
  (uid/gid 65534, no supplementary groups) before any user code is loaded; it cannot
  read files only the trainer's user may read, nor signal or trace the trainer;
- **no credentials**: the host starts with an empty environment (``PATH``, ``HOME`` = a
  fresh empty folder, ``LANG``, one thread per math library) — no ``AWS_*``, no
  ``TIDETUNE_*``, no registry token; the trainer makes itself non-dumpable
  (``PR_SET_DUMPABLE`` 0) so that its ``/proc/<pid>/environ`` and memory are owned by
  root and unreadable even by a process of the same user; with a private mount namespace
  the ServiceAccount and secret directories (``/var/run/secrets``, ``/run/secrets``) are
  covered by empty tmpfs;
- **no network** where the kernel permits a new network namespace (as root, or through
  an unprivileged user namespace): no interface is up in it, so no address —
  the S3 endpoint, the API server, loopback — is reachable. Where it is not permitted
  the call still runs and :attr:`Sandbox.network` says ``shared``;
- **per call**: a forked child in its own session with ``RLIMIT_AS`` =
  ``rewardRuntime.memoryMiB``, ``RLIMIT_CPU`` = the timeout, ``RLIMIT_NPROC`` = 32 more
  processes than its user already has, files ≤ 64 MiB and no core files; after
  ``rewardRuntime.timeoutSeconds`` of wall clock the whole session is killed. Whatever
  happens, the trainer gets an answer within the timeout plus a few seconds: if the host
  itself stops answering it is killed and started again.
- **checked output**: one finite number per completion, else :class:`RewardError`
  naming the rule (``spec.rl.rewards[i] (configmap/key:entrypoint)``) and the user's own
  traceback line.

What it does not do: it is not a container. The user's code can read world-readable
files of the node's filesystem (the trainer image, the model cache if world-readable)
and use the CPU/memory limits given.

**The reward runtime container.** When ``TIDETUNE_REWARD_SOCKET`` names a Unix socket
(the operator sets it on the trainer container of a job with custom rules), the host is
not started here: the trainer connects to the ``reward-runtime`` sidecar of its pod,
which runs ``sandbox_host --listen`` from ``rl.rewardRuntime.image`` with its own
filesystem, its own cgroup (CPU/memory limits), its own user, no Secret in its
environment, no ServiceAccount token and no view of the trainer's processes. The
protocol, the per-call limits and the checks of the output are the same; a host that
stops answering is disconnected (its calls die at their wall-clock limit) and the next
call connects again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidetune.layout import REWARD_SOCKET_ENV
from tidetune_trainer.rl.rewards import RewardError, check_scores

log = logging.getLogger(__name__)

HOST_SCRIPT = Path(__file__).with_name("sandbox_host.py")
#: seconds the trainer waits beyond a call's own limit before it kills the host
GRACE_SECONDS = 10.0
#: seconds the host may take to start and load the functions
START_SECONDS = 60.0
#: extra processes a call may start (fork bombs stop here)
CALL_NPROC = 32
#: a function's printed output reaches the trainer log at most this often
LOG_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Limits:
    """Per-call limits (``spec.rl.rewardRuntime``)."""

    timeout_seconds: float = 30.0
    memory_mb: int = 1024
    network_isolation: bool = True

    @classmethod
    def from_spec(cls, runtime: Any) -> Limits:
        if runtime is None:
            return cls()
        return cls(float(runtime.timeout_seconds), int(runtime.memory_mi_b))


@dataclass(frozen=True)
class UserFunction:
    """A rule's source: where it came from (for messages), its text and entry point."""

    name: str
    filename: str
    source: str
    entrypoint: str
    requirements: tuple[str, ...] = ()


def make_non_dumpable() -> None:
    """``prctl(PR_SET_DUMPABLE, 0)``: this process's /proc files become root's."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except OSError:  # pragma: no cover - no libc (not Linux)
        log.warning("cannot make the trainer non-dumpable; /proc/<pid>/environ stays readable")


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:  # pragma: no cover - a minimal image without the user
        return 65534, 65534


@dataclass
class Sandbox:
    """A running sandbox host (see the module doc); close it with :meth:`close`."""

    functions: list[UserFunction]
    limits: Limits
    python: str = sys.executable
    #: the reward runtime container's socket; None: start the host as a child
    socket_path: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    conn: socket.socket | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _home: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _buf: bytes = b""
    #: the output of each function's latest call
    last_logs: dict[int, str] = field(default_factory=dict)
    _logged: dict[int, float] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        functions: Sequence[UserFunction],
        limits: Limits = Limits(),
        python: str | None = None,
        socket_path: str | None = None,
    ) -> Sandbox:
        """Start the host (or connect to the reward runtime container: ``socket_path``,
        default ``$TIDETUNE_REWARD_SOCKET``) and load the functions."""
        where = socket_path or os.environ.get(REWARD_SOCKET_ENV) or None
        sb = cls(list(functions), limits, python or sys.executable, where)
        sb._spawn()
        return sb

    @property
    def runtime(self) -> str:
        """``container`` (the reward runtime sidecar) or ``process`` (a child)."""
        return "container" if self.socket_path else "process"

    @property
    def network(self) -> str:
        """``isolated`` (a network namespace of its own) or ``shared``."""
        return str(self.info.get("network", "shared"))

    @property
    def user(self) -> int:
        return int(self.info.get("uid", -1))

    def _alive(self) -> bool:
        if self.socket_path:
            return self.conn is not None
        return self.proc is not None and self.proc.poll() is None

    def _connect(self) -> None:
        """Connect to the reward runtime container, waiting for it while it starts."""
        assert self.socket_path is not None
        deadline = time.monotonic() + START_SECONDS
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self.socket_path)
            except OSError as e:
                conn.close()
                if time.monotonic() >= deadline:
                    raise RewardError(
                        f"the reward runtime container does not answer at {self.socket_path} "
                        f"({e.strerror or e}) after {START_SECONDS:g} s; see the logs of the "
                        "pod's reward-runtime container"
                    ) from None
                time.sleep(0.2)
                continue
            self.conn = conn
            return

    def _spawn(self) -> None:
        make_non_dumpable()
        if self.socket_path:
            self._connect()
            # the container decides its user and folder; these are for the child mode
            self._send(
                {
                    "uid": -1,
                    "gid": -1,
                    "cwd": None,
                    "network_isolation": self.limits.network_isolation,
                    "limits": self._limits(),
                    "rules": self._rules(),
                }
            )
            self._ready()
            return
        root = os.geteuid() == 0
        uid, gid = _nobody() if root else (-1, -1)
        self._home = tempfile.mkdtemp(prefix="tidetune-reward-")
        if root:
            os.chown(self._home, uid, gid)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self._home,
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            # one thread per math library: a call's CPU limit is one core's worth, and
            # per-thread buffers would eat into its address-space limit
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [self.python, "-I", str(HOST_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("TIDETUNE_SANDBOX_DEBUG") else subprocess.DEVNULL,
            env=env,
            cwd=self._home,
            close_fds=True,
            start_new_session=True,
        )
        setup = {
            "uid": uid,
            "gid": gid,
            "cwd": self._home,
            "network_isolation": self.limits.network_isolation,
            "limits": self._limits(),
            "rules": self._rules(),
        }
        self._send(setup)
        self._ready()

    def _limits(self) -> dict[str, Any]:
        return {
            "timeout": self.limits.timeout_seconds,
            "memory_mb": self.limits.memory_mb,
            "nproc": CALL_NPROC,
        }

    def _rules(self) -> list[dict[str, Any]]:
        return [
            {
                "name": f.name,
                "filename": f.filename,
                "source": f.source,
                "entrypoint": f.entrypoint,
                "requirements": list(f.requirements),
            }
            for f in self.functions
        ]

    def _ready(self) -> None:
        ready = self._receive(START_SECONDS, "loading the reward functions")
        self.info = ready
        if not ready.get("ready"):
            problems = ready.get("problems") or ["the reward sandbox did not start"]
            self.close()
            raise RewardError("\n".join(problems))
        log.info(
            "reward sandbox: %s, uid %s, network %s, %d function(s)",
            f"the reward runtime container at {self.socket_path}"
            if self.socket_path
            else "a child process",
            self.info.get("uid"),
            self.network,
            len(self.functions),
        )

    def _send(self, obj: Any) -> None:
        data = json.dumps(obj).encode() + b"\n"
        if self.socket_path:
            assert self.conn is not None
            self.conn.sendall(data)
            return
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _receive(self, timeout: float, what: str) -> dict[str, Any]:
        if self.socket_path:
            assert self.conn is not None
            fd = self.conn.fileno()
        else:
            assert self.proc is not None and self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise RewardError(
                    f"the reward sandbox did not answer within {timeout:g} s ({what})"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:  # a reset connection
                chunk = b""
            if not chunk:
                if self.socket_path:
                    self._kill()
                    raise RewardError(
                        f"the reward runtime container closed the connection ({what})"
                    )
                code = self.proc.poll() if self.proc is not None else None
                self._kill()
                raise RewardError(f"the reward sandbox exited ({what}; status {code})")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _kill(self) -> None:
        """Stop the host: kill the child, or drop the connection to the container (its
        handler ends; a call in flight dies at its wall-clock limit)."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
            self.conn = None
            self._buf = b""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
            self.proc.wait()

    def call(
        self,
        index: int,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Sequence[Any]],
    ) -> tuple[list[float], str]:
        """Scores of function ``index`` for a batch, and its logs. Raises
        :class:`RewardError` naming the rule for errors, timeouts and bad output."""
        f = self.functions[index]
        with self._lock:
            if not self._alive():
                self._buf = b""
                self._spawn()
            payload = {
                "rule": index,
                "prompts": list(prompts),
                "completions": list(completions),
                "columns": {k: list(v) for k, v in columns.items()},
            }
            try:
                self._send(payload)
            except (BrokenPipeError, OSError):
                self._kill()
                raise RewardError(f"{f.name}: the reward sandbox went away") from None
            try:
                reply = self._receive(self.limits.timeout_seconds + GRACE_SECONDS, f.name)
            except RewardError as e:
                raise RewardError(f"{f.name}: {e}") from None
        logs = str(reply.get("logs") or "")
        if "error" in reply:
            tail = f"\n  output: {logs.strip()[-500:]}" if logs.strip() else ""
            raise RewardError(f"{f.name}: {reply['error']}{tail}")
        if "bad" in reply:
            raise RewardError(
                f"{f.name}: {reply['bad']}; expected a list of {len(completions)} numbers"
            )
        return check_scores(f.name, reply.get("scores"), len(completions)), logs

    def rule(self, index: int) -> Any:
        """A batch function ``(prompts, completions, columns) -> scores`` for a rule.

        What the function prints goes to the trainer's log (its rank log in the run
        location), at most once a minute per rule, and is kept in :attr:`last_logs`."""

        def score(
            prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence[Any]]
        ) -> list[float]:
            scores, logs = self.call(index, prompts, completions, columns)
            self.last_logs[index] = logs
            now = time.monotonic()
            if (
                logs.strip()
                and now - self._logged.get(index, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS
            ):
                self._logged[index] = now
                log.info("%s printed:\n%s", self.functions[index].name, logs.rstrip()[-4000:])
            return scores

        score.close = self.close  # type: ignore[attr-defined]
        score.sandbox = self  # type: ignore[attr-defined]
        score.index = index  # type: ignore[attr-defined]
        return score

    def close(self) -> None:
        if self.conn is not None:
            self._kill()
        if self.proc is not None:
            if self.proc.poll() is None and self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._kill()
            self.proc = None
        if self._home:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

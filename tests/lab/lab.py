"""The lab: a Kubernetes API, S3 and supervised processes on loopback, for e2e tests and humans.

``Lab`` starts, in order: the Kubernetes API emulator (``tests.support.k8s``, https with a
token, CRDs from ``crds/`` applied), a moto S3 server with the bucket ``tidetune``
(``tests.support.s3``), the registered components (:class:`LabComponent`: the Kubeflow
training-operator stand-in plugs in here), then the supervised processes (the TideTune
operator is one, added with :meth:`Lab.add_operator`). It writes ``DIR/kubeconfig`` and
``DIR/lab.json`` and keeps ``lab.json`` current (``operatorPid`` changes when the operator is
restarted). Every child's output goes to ``DIR/logs/<name>.log``.

Supervision works as a Deployment with ``restartPolicy: Always`` would: a process that exits
(crash, SIGKILL) is started again after a back-off of 0.5 s doubling to 10 s, reset once it
has stayed up for 30 s.

Use it from pytest (the ``lab`` fixture in ``tests/conftest.py``) or by hand with
``python -m tests.lab --dir DIR``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tests.lab.processes import SupervisedProcess
from tests.support.k8s import EmulatorServer, KubernetesEmulator, load_crd_documents
from tests.support.s3 import S3Endpoint, start_s3

__all__ = ["REPO_ROOT", "Lab", "LabComponent", "SupervisedProcess"]

logger = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OPERATOR = "operator"  # the process name whose pid lab.json reports as operatorPid


class LabComponent(Protocol):
    """Something the lab starts after the API and S3 and stops before them.

    The Kubeflow training-operator / kubelet stand-in is one: it watches PyTorchJobs through
    ``lab.kubeconfig`` and runs them as local processes. ``start`` must return once the
    component is ready; ``stop`` must be idempotent.
    """

    name: str

    def start(self, lab: Lab) -> None: ...

    def stop(self) -> None: ...


class Lab:
    """The test lab (see the module doc).

    Args:
        workdir: where ``kubeconfig``, ``lab.json``, ``ca.crt`` and ``logs/`` go.
        crds: CRD files or directories to apply at start; ``crds/`` of the repository by default
            (skipped when it does not exist).
        s3: start the S3 server (``True``) or not.
        bucket: the bucket to create.

    Raises:
        FileNotFoundError / ValueError: (at ``start``) a CRD path is missing or not YAML.
        RuntimeError: (at ``start``) a part did not come up; what was started is stopped again.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        crds: Sequence[str | pathlib.Path] | None = None,
        s3: bool = True,
        bucket: str = "tidetune",
    ) -> None:
        self.workdir = pathlib.Path(workdir).resolve()
        default_crds = [REPO_ROOT / "crds"] if (REPO_ROOT / "crds").is_dir() else []
        self.crd_paths = list(crds) if crds is not None else default_crds
        self.want_s3 = s3
        self.bucket = bucket
        self.k8s: EmulatorServer | None = None
        self.s3: S3Endpoint | None = None
        self.metrics_url: str | None = None
        self.processes: dict[str, SupervisedProcess] = {}
        self.components: list[LabComponent] = []
        self._stack = contextlib.ExitStack()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._started = False

    # -- what the tests read ------------------------------------------------------------------

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.workdir / "kubeconfig"

    @property
    def info_path(self) -> pathlib.Path:
        return self.workdir / "lab.json"

    @property
    def api_url(self) -> str:
        if self.k8s is None:
            raise RuntimeError("the lab is not started")
        return self.k8s.url

    @property
    def emulator(self) -> KubernetesEmulator:
        """The in-process API emulator (touch it only via ``lab.k8s.call``/``run``)."""
        if self.k8s is None:
            raise RuntimeError("the lab is not started")
        return self.k8s.emulator

    @property
    def operator_pid(self) -> int | None:
        proc = self.processes.get(OPERATOR)
        return proc.pid if proc is not None else None

    def info(self) -> dict[str, Any]:
        """What ``lab.json`` holds."""
        return {
            "kubeconfig": str(self.kubeconfig),
            "apiUrl": self.k8s.url if self.k8s is not None else None,
            "caFile": str(self.k8s.ca_file) if self.k8s is not None and self.k8s.cert else None,
            "s3": self.s3.as_dict() if self.s3 is not None else None,
            "operatorPid": self.operator_pid,
            "metricsUrl": self.metrics_url,
            "processes": {
                name: {
                    "pid": p.pid,
                    "restarts": p.restarts,
                    "argv": p.argv,
                    "log": str(p.log_path) if p.log_path else None,
                }
                for name, p in self.processes.items()
            },
            "components": [c.name for c in self.components],
            "logs": str(self.workdir / "logs"),
        }

    def env(self) -> dict[str, str]:
        """The environment for processes that talk to the lab (KUBECONFIG, S3, PYTHONPATH)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        paths = [str(REPO_ROOT), str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer-image")]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        if self.s3 is not None:
            env["TIDETUNE_LAB_S3_ENDPOINT"] = self.s3.endpoint
            env["AWS_ACCESS_KEY_ID"] = self.s3.access_key
            env["AWS_SECRET_ACCESS_KEY"] = self.s3.secret_key
            env["AWS_DEFAULT_REGION"] = self.s3.region
        return env

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the lab (see :meth:`EmulatorServer.kubectl`)."""
        if self.k8s is None:
            raise RuntimeError("the lab is not started")
        return self.k8s.kubectl(*args, input=input, timeout=timeout, check=check)

    # -- extension points ---------------------------------------------------------------------

    def add_component(self, component: LabComponent) -> None:
        """Register a component; started now if the lab is running, else at :meth:`start`."""
        with self._lock:
            self.components.append(component)
            if self._started:
                component.start(self)
                self._stack.callback(component.stop)
                self.write_info()

    def add_process(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        restart: bool = True,
        *,
        cwd: str | pathlib.Path | None = None,
    ) -> SupervisedProcess:
        """Supervise a child process: started now if the lab is running, else at :meth:`start`.

        ``env`` is added to :meth:`env` (the lab's environment). With ``restart`` the process is
        started again whenever it exits, until the lab stops.

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
                env=dict(env or {}),
                restart=restart,
                cwd=pathlib.Path(cwd) if cwd else REPO_ROOT,
                log_path=self.workdir / "logs" / f"{name}.log",
            )
            self.processes[name] = proc
            if self._started:
                self._spawn(proc)
                self.write_info()
        return proc

    def add_operator(
        self,
        module: str = "tidetune_operator",
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        metrics_url: str | None = None,
    ) -> SupervisedProcess:
        """Run ``kopf run -A --standalone -m <module>`` as the supervised process ``operator``.

        Its pid is ``operatorPid`` in ``lab.json``; ``metrics_url`` (if the operator serves
        Prometheus metrics) becomes ``metricsUrl``.
        """
        kopf = pathlib.Path(sys.executable).parent / "kopf"
        argv = [
            str(kopf) if kopf.exists() else "kopf",
            "run",
            "-A",
            "--standalone",
            "-m",
            module,
            *extra_args,
        ]
        self.metrics_url = metrics_url
        return self.add_process(OPERATOR, argv, env, restart=True)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Lab:
        """Start everything (see the module doc); returns self."""
        if self._started:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            crds = load_crd_documents(self.crd_paths)
            emulator = KubernetesEmulator(crds=crds)
            self.k8s = self._stack.enter_context(EmulatorServer(self.workdir, emulator))
            if self.want_s3:
                self.s3 = self._stack.enter_context(start_s3(self.bucket))
            with self._lock:
                for component in self.components:
                    component.start(self)
                    self._stack.callback(component.stop)
                self._started = True
                for proc in self.processes.values():
                    self._spawn(proc)
            self._stopping.clear()
            self._supervisor = threading.Thread(
                target=self._supervise, name="lab-supervisor", daemon=True
            )
            self._supervisor.start()
            self.write_info()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stop the processes (SIGTERM, then SIGKILL after ``grace`` s), components, S3, API."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None
        with self._lock:
            procs = list(self.processes.values())
            for proc in procs:
                self._terminate(proc, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for proc in procs:
                if proc.popen is None:
                    continue
                try:
                    proc.popen.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._terminate(proc, signal.SIGKILL)
                    proc.popen.wait(5)
                if proc._log is not None:
                    proc._log.close()
                    proc._log = None
            self._started = False
        self._stack.close()
        if self.info_path.exists():
            self.write_info()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_info(self) -> None:
        """Write ``lab.json`` atomically (mode 0600: it holds the S3 secret key)."""
        tmp = self.info_path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.info(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, self.info_path)

    # -- supervision --------------------------------------------------------------------------

    def _spawn(self, proc: SupervisedProcess) -> None:
        if proc.log_path is not None and proc._log is None:
            proc.log_path.parent.mkdir(parents=True, exist_ok=True)
            proc._log = open(proc.log_path, "ab")  # noqa: SIM115 - kept open across restarts
        if proc._log is not None:
            proc._log.write(
                f"--- lab: starting {proc.name} (run {proc.restarts + 1}) ---\n".encode()
            )
            proc._log.flush()
        env = self.env()
        env.update(proc.env)
        proc.popen = subprocess.Popen(
            proc.argv,
            env=env,
            cwd=proc.cwd,
            stdin=subprocess.DEVNULL,
            stdout=proc._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C reaches the lab only
        )
        proc.started_at = time.monotonic()
        logger.info("lab: started %s (pid %s)", proc.name, proc.popen.pid)

    @staticmethod
    def _terminate(proc: SupervisedProcess, signum: int) -> None:
        if proc.popen is None or proc.popen.poll() is not None:
            return
        try:
            os.killpg(proc.popen.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signum)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.1):
            changed = False
            with self._lock:
                if self._stopping.is_set():
                    break
                now = time.monotonic()
                for proc in self.processes.values():
                    if proc.popen is None or proc.popen.poll() is None:
                        continue
                    if not proc.next_start:  # just noticed the exit
                        code = proc.popen.returncode
                        proc.exit_codes.append(code)
                        ran = now - proc.started_at
                        proc.failures_in_a_row = 0 if ran >= 30 else proc.failures_in_a_row + 1
                        delay = min(0.5 * 2 ** max(proc.failures_in_a_row - 1, 0), 10.0)
                        proc.next_start = now + delay if proc.restart else float("inf")
                        logger.warning(
                            "lab: %s exited with %s after %.1f s%s",
                            proc.name,
                            code,
                            ran,
                            f"; restarting in {delay:.1f} s" if proc.restart else "",
                        )
                        changed = True
                    if proc.restart and now >= proc.next_start:
                        proc.restarts += 1
                        proc.next_start = 0.0
                        self._spawn(proc)
                        changed = True
            if changed:
                with contextlib.suppress(OSError):
                    self.write_info()

"""One pod's life on a lab node: sandbox, volumes, containers, probes, status, deletion.

A :class:`PodWorker` thread per pod drives a small state machine on a 0.25 s tick (woken
early by watch events, exits and probe results):

1. sandbox: an address from the node's pod CIDR, a network namespace (not for
   ``hostNetwork``), the pod's /etc/hosts, /etc/resolv.conf, /etc/hostname;
2. volumes (:mod:`tests.lab.nodeagent.volumes`); one that cannot be set up yet
   (a missing ConfigMap) keeps every container ``ContainerCreating``, retried every 2 s;
3. init containers one after the other, each until it exits 0 (restarted per
   ``restartPolicy``; with ``Never`` a failure fails the pod) — a sidecar (``restartPolicy:
   Always``) only until it has *started* (its startupProbe succeeded, or at once), then it
   keeps running beside the others, restarted whenever it exits; then all containers;
4. each container: image → local environment (unknown: ``ErrImagePull`` then
   ``ImagePullBackOff``), env and user (``CreateContainerConfigError``, retried), then the
   shim (:mod:`tests.lab.nodeagent.shim`) under a memory cgroup, stdout/stderr to a
   CRI-format log file;
5. exits: exit code (128+signal when killed), reason ``Completed``/``Error``/``OOMKilled``
   /``StartError``, the termination message; restarts with the kubelet's crash-loop
   back-off: the first restart at once, then after 10 s, 20 s, 40 s … up to 300 s (a
   container that ran longer than its current back-off restarts at once; the back-off
   resets after 600 s without a restart) — the delays come from the agent config;
6. probes (startup, liveness, readiness; exec, httpGet, tcpSocket) in a thread per
   container with their timing fields;
7. deletion: preStop hooks, SIGTERM to each container's main process, SIGKILL to all its
   processes after the grace period — the sidecars last, in reverse order, each once the
   regular containers and the later sidecars have exited — a last status, then ``DELETE``
   with ``gracePeriodSeconds: 0`` and the pod's UID as precondition. When every regular
   container has ended for good (restartPolicy Never/OnFailure) the sidecars are stopped
   the same way, and their exit codes do not count for the phase. A pod that ends
   (Succeeded/Failed) keeps its status and logs until it is deleted; its sandbox is torn
   down at once.

Status is written with a strategic-merge ``PATCH`` of ``pods/status`` whenever it changes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import http.client
import json
import logging
import os
import pathlib
import queue
import secrets
import select
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

from tests.lab.nodeagent import spec as specs
from tests.lab.nodeagent.api import ApiError, KubeApi
from tests.lab.nodeagent.cgroups import Cgroup, CgroupRoot
from tests.lab.nodeagent.net import Ipam, PodNetwork
from tests.lab.nodeagent.status import (
    ContainerRecord,
    build_conditions,
    now_iso,
    pod_phase,
    readiness_gates_problem,
    termination_reason,
)
from tests.lab.nodeagent.volumes import PodVolumes, VolumeError

__all__ = ["NodeContext", "PodWorker", "Runtime", "Spawner"]

logger = logging.getLogger(__name__)
JSON = dict[str, Any]
SHIM = str(pathlib.Path(__file__).with_name("shim.py"))
TICK = 0.25
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


class Spawner:
    """Starts every container process from one long-lived thread.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, so children are
    forked by a thread that lives as long as the agent.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[
            tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[Any]] | None
        ] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="spawner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            start, future = item
            try:
                future.set_result(start())
            except BaseException as exc:
                future.set_exception(exc)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._queue.put((lambda: subprocess.Popen(argv, **kwargs), future))
        return future.result(timeout=30)

    def close(self) -> None:
        self._queue.put(None)


@dataclasses.dataclass
class NodeContext:
    """The node a pod runs on."""

    name: str
    address: str
    ipam: Ipam
    allocatable: Mapping[str, Any]


class Runtime(Protocol):
    """What a pod worker needs from the agent."""

    api: KubeApi
    network: PodNetwork
    spawner: Spawner
    cgroups: CgroupRoot
    workdir: pathlib.Path
    images: list[specs.ImageConfig]
    api_host: str
    api_port: int
    dns_address: str
    cluster_domain: str
    backoff_initial: float
    backoff_max: float

    def event(
        self,
        pod: JSON,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        field_path: str = "",
        node: str = "",
    ) -> None: ...

    def worker_done(self, uid: str) -> None: ...


def _rfc3339(ts: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(ts if ts is not None else time.time(), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class LogWriter(threading.Thread):
    """Copies a container's stdout/stderr into its log file in the CRI format."""

    def __init__(self, proc: subprocess.Popen[bytes], path: pathlib.Path, wake: Callable[[], None]):
        super().__init__(name=f"log-{path.parent.name}", daemon=True)
        self.proc = proc
        self.path = path
        self._wake = wake

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        partial: dict[str, bytes] = {}
        for pipe, label in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr")):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                selector.register(pipe, selectors.EVENT_READ, label)
                partial[label] = b""
        with self.path.open("ab") as out:
            while selector.get_map():
                for key, _ in selector.select(timeout=1.0):
                    name = key.data
                    stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                    try:
                        chunk = os.read(stream.fileno(), 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(stream)
                        if partial[name]:
                            out.write(f"{_rfc3339()} {name} F ".encode() + partial[name] + b"\n")
                            partial[name] = b""
                        continue
                    data = partial[name] + chunk
                    *lines, rest = data.split(b"\n")
                    stamp = _rfc3339()
                    for line in lines:
                        out.write(f"{stamp} {name} F ".encode() + line + b"\n")
                    if len(rest) >= 16384:
                        out.write(f"{stamp} {name} P ".encode() + rest + b"\n")
                        rest = b""
                    partial[name] = rest
                out.flush()
        with contextlib.suppress(Exception):
            self.proc.wait()
        self._wake()


def read_log_lines(path: pathlib.Path) -> list[tuple[str, str, bytes]]:
    """(timestamp, stream, text) of each logical line of a CRI log file."""
    lines: list[tuple[str, str, bytes]] = []
    pending = b""
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        for raw in handle:
            parts = raw.rstrip(b"\n").split(b" ", 3)
            if len(parts) < 4:
                continue
            stamp, stream, tag, text = parts
            pending += text
            if tag == b"F":
                lines.append((stamp.decode(), stream.decode(), pending + b"\n"))
                pending = b""
    return lines


@dataclasses.dataclass
class Container:
    """One container of the pod and its current process."""

    spec: JSON
    record: ContainerRecord
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    cgroup: Cgroup | None = None
    log_dir: pathlib.Path | None = None
    term_file: pathlib.Path | None = None
    error_file: pathlib.Path | None = None
    started_mono: float = 0.0
    next_start: float = 0.0
    #: kubelet-style back-off: current period, and when it was last advanced
    backoff: float = 0.0
    backoff_updated: float = 0.0
    kill_deadline: float | None = None
    killing_reason: str = ""
    #: being stopped: SIGTERM is due once the preStop hook ran and (``ordered``: a sidecar
    #: stopped with its pod) its turn came, or at ``stop_deadline`` at the latest
    stopping: bool = False
    stop_deadline: float = 0.0
    ordered: bool = False
    pre_stop_running: bool = False
    term_sent: bool = False
    oom_before: int = 0
    image_failures: int = 0
    prober: Prober | None = None
    handlers: Handlers | None = None
    attempt: int = 0
    runs: int = 0
    done: bool = False  # will not run again

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def sidecar(self) -> bool:
        """A restartable init container (``restartPolicy: Always``): a native sidecar."""
        return self.init and self.spec.get("restartPolicy") == "Always"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_path(self, attempt: int) -> pathlib.Path:
        assert self.log_dir is not None
        return self.log_dir / f"{attempt}.log"

    def signal(self, sig: int, *, group: bool = False) -> None:
        """``sig`` to the main process; with ``group``, to every process of the container
        (its cgroup when there is one, else its process group)."""
        if self.proc is None:
            return
        if not group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.proc.send_signal(sig)  # never a reused pid: Popen checks it first
            return
        if self.cgroup is not None and sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.proc.send_signal(sig)
            self.cgroup.kill_all()
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class PodWorker(threading.Thread):
    """Runs one pod (see the module docstring)."""

    def __init__(self, pod: JSON, node: NodeContext, runtime: Runtime) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.pod = pod
        self.uid = str(meta["uid"])
        self.node = node
        self.rt = runtime
        self.dir = runtime.workdir / "pods" / self.uid
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.gone = False  # the pod no longer exists in the API
        self.abandoned = False  # the node was lost: no more API writes
        self.pod_ip = ""
        self.sandbox_ready = False
        self.netns: str | None = None
        self.volumes: PodVolumes | None = None
        self.volumes_ready = False
        self.terminal = False
        self.start_time = ""
        self.last_status: JSON | None = None
        self.last_volume_refresh = 0.0
        self.deleted_by_us = False
        #: every regular container has ended for good (or initialization failed for good):
        #: the sidecars are being stopped and are not restarted
        self.completing = False
        spec = pod.get("spec") or {}
        self.containers = [
            Container(
                c,
                ContainerRecord(
                    c["name"],
                    c.get("image", ""),
                    init=True,
                    sidecar=c.get("restartPolicy") == "Always",
                ),
                True,
            )
            for c in spec.get("initContainers") or []
        ] + [
            Container(
                c,
                ContainerRecord(
                    c["name"],
                    c.get("image", ""),
                    waiting_reason=(
                        "PodInitializing" if spec.get("initContainers") else "ContainerCreating"
                    ),
                ),
                False,
            )
            for c in spec.get("containers") or []
        ]
        self._conditions_prev: list[JSON] = []
        self._last_warning = 0.0

    # --- inputs from other threads ------------------------------------------------------

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def pod_name(self) -> str:
        return str(self.pod["metadata"]["name"])

    def update(self, pod: JSON) -> None:
        with self._lock:
            self.pod = pod
        self.wake()

    def mark_gone(self) -> None:
        self.gone = True
        self.wake()

    def abandon(self) -> None:
        """The node is lost: SIGKILL everything now, never write to the API again."""
        self.abandoned = True
        for container in self.containers:
            container.signal(signal.SIGKILL, group=True)
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def signal_container(self, name: str, sig: int) -> bool:
        for container in self.containers:
            if container.name == name and container.running():
                container.signal(sig)
                return True
        return False

    def log_file(self, name: str, previous: bool) -> tuple[pathlib.Path | None, bool]:
        """(log file, still being written) of a container's current or previous run."""
        for container in self.containers:
            if container.name == name and container.log_dir is not None:
                attempt = container.record.restart_count - (1 if previous else 0)
                if attempt < 0:
                    return None, False
                path = container.log_path(attempt)
                live = not previous and container.running()
                return (path if path.exists() else None), live
        return None, False

    # --- the loop ------------------------------------------------------------------------

    @property
    def restart_policy(self) -> str:
        return str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")

    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp")) or self.gone

    def run(self) -> None:
        try:
            self._loop()
        except Exception:
            logger.exception("pod %s/%s: worker failed", self.namespace, self.pod_name)
        finally:
            self._kill_all(grace=0)
            self._teardown_sandbox()
            if self.volumes is not None:
                self.volumes.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.rt.worker_done(self.uid)

    def _loop(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start_time = now_iso()
        termination_started = False
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            if self.abandoned:
                return
            if self.gone:
                self._kill_all(grace=2.0)
                return
            if self.deleting:
                if not termination_started:
                    termination_started = True
                    grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
                    self._terminate_all(float(grace if grace is not None else 30), "Killing")
                self._reap()
                self._advance_stops()
                if any(c.running() for c in self.containers):
                    self._sync_status()
                    continue
                self._finish_deletion()
                return
            if self.terminal:
                continue
            if not self.sandbox_ready and not self._setup_sandbox():
                continue
            if not self.volumes_ready:
                self._setup_volumes()
            elif self.volumes is not None and (
                self.volumes.tokens_due() or time.monotonic() - self.last_volume_refresh > 60
            ):
                self.last_volume_refresh = time.monotonic()
                self.volumes.refresh()
            self._reap()
            self._complete_if_done()
            if self.volumes_ready:
                self._start_due()
            self._advance_stops()
            phase = self._phase()
            if phase in {"Succeeded", "Failed"} and not any(c.running() for c in self.containers):
                self.terminal = True
                self._sync_status()
                self._teardown_sandbox()
                continue
            self._sync_status()

    # --- sandbox and volumes -------------------------------------------------------------

    def _setup_sandbox(self) -> bool:
        spec = self.pod.get("spec") or {}
        try:
            if spec.get("hostNetwork"):
                self.pod_ip = self.node.address
            else:
                self.pod_ip = self.node.ipam.allocate(self.uid)
                self.netns = self.rt.network.create(self.uid[:13], self.pod_ip)
        except RuntimeError as exc:
            self.rt.event(
                self.pod, "FailedCreatePodSandBox", str(exc), warning=True, node=self.node.name
            )
            self._wake.wait(2.0)  # retried, as the kubelet does, without flooding events
            return False
        etc = self.dir / "etc"
        etc.mkdir(exist_ok=True)
        hostname, _ = specs.pod_hostname(self.pod)
        host_resolv = ""
        with contextlib.suppress(OSError):
            host_resolv = pathlib.Path("/etc/resolv.conf").read_text()
        (etc / "resolv.conf").write_text(
            specs.resolv_conf(
                self.pod,
                cluster_dns=self.rt.dns_address,
                cluster_domain=self.rt.cluster_domain,
                host_resolv=host_resolv,
            )
        )
        if spec.get("hostNetwork"):
            shutil.copyfile("/etc/hosts", etc / "hosts")
        else:
            (etc / "hosts").write_text(
                specs.hosts_file(self.pod, self.pod_ip, self.rt.cluster_domain)
            )
        (etc / "hostname").write_text(hostname + "\n")
        for path in etc.iterdir():
            path.chmod(0o644)
        self.sandbox_ready = True
        self._sync_status()
        return True

    def _teardown_sandbox(self) -> None:
        if self.netns is not None:
            self.rt.network.delete(self.uid[:13])
            self.netns = None
        self.node.ipam.release(self.uid)

    def _common_run_as_user(self) -> int | None:
        spec = self.pod.get("spec") or {}
        pod_user = (spec.get("securityContext") or {}).get("runAsUser")
        users = {
            (c.spec.get("securityContext") or {}).get("runAsUser", pod_user)
            for c in self.containers
        }
        user = users.pop() if len(users) == 1 else None
        return int(user) if user is not None else None

    def _setup_volumes(self) -> None:
        if self.volumes is None:
            self.volumes = PodVolumes(
                self.pod,
                self.dir / "volumes",
                get=self._get_object,
                request_token=self._request_token,
                host_ip=self.node.address,
                node_allocatable=self.node.allocatable,
                run_as_user=self._common_run_as_user(),
            )
            self.volumes.pod_ip = self.pod_ip
        try:
            self.volumes.setup()
        except (VolumeError, specs.ConfigError) as exc:
            if time.monotonic() - self.last_volume_refresh > 10:
                self.last_volume_refresh = time.monotonic()
                self.rt.event(
                    self.pod,
                    "FailedMount",
                    f"MountVolume.SetUp failed: {exc}",
                    warning=True,
                    node=self.node.name,
                )
            self._wake.wait(2.0)
            return
        self.volumes_ready = True
        self.last_volume_refresh = time.monotonic()

    def _get_object(self, kind: str, namespace: str, name: str) -> JSON | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        try:
            return self.rt.api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise VolumeError(str(exc)) from exc

    def _request_token(self, namespace: str, account: str, body: JSON) -> JSON:
        return self.rt.api.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body
        )

    def _lookup(self, kind: str) -> specs.Lookup:
        def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
            try:
                obj = self._get_object(kind, namespace, name)
            except VolumeError as exc:
                raise specs.ConfigError(str(exc)) from exc
            if obj is None:
                return None
            if kind == "Secret":
                return specs.decode_secret(obj.get("data"))
            return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

        return lookup

    # --- containers ----------------------------------------------------------------------

    def _pod_initialized(self) -> bool:
        """A regular container has run: init containers are done with (sidecars aside)."""
        return any(c.runs for c in self.containers if not c.init)

    def _start_due(self) -> None:
        """What the kubelet's ``computeInitContainerActions`` and ``computePodActions`` start.

        Before initialization the init containers go in order: a regular one must exit 0, a
        sidecar must be *started* (its startupProbe succeeded, or at once without one) before
        the next init container starts; then the regular containers start. A sidecar that
        exits is restarted whatever the pod's restartPolicy (with the crash-loop back-off),
        before initialization as after it, until the pod completes.
        """
        now = time.monotonic()
        if not self._pod_initialized():
            init = [c for c in self.containers if c.init]
            # as the kubelet does: the furthest init container that ran decides what is next;
            # the sidecars before it are kept running
            last = max((i for i, c in enumerate(init) if c.runs), default=-1)
            for container in init[: max(last, 0)]:
                if container.sidecar:
                    self._start_if_due(container, now)
            if last >= 0:
                container = init[last]
                if container.running():
                    if not (container.sidecar and container.record.started):
                        return  # a regular one runs to its end; a sidecar's startupProbe
                elif container.sidecar or not container.record.succeeded():
                    self._start_if_due(container, now)  # restarted (unless it failed the pod)
                    return
            if last + 1 < len(init):
                self._start_if_due(init[last + 1], now)
                return
        for container in self.containers:
            if container.running() or container.done:
                continue
            if container.init and not container.sidecar:
                continue
            self._start_if_due(container, now)

    def _start_if_due(self, container: Container, now: float) -> None:
        if container.running() or container.done or now < container.next_start:
            return
        if container.sidecar and self.completing:
            return
        self._start(container)

    def _complete_if_done(self) -> None:
        """Every regular container ended for good (restartPolicy Never/OnFailure), or a
        regular init container failed with Never: stop the sidecars, the last one first,
        each once the regular containers and the sidecars after it have exited (the
        kubelet's termination ordering), within the pod's terminationGracePeriodSeconds."""
        if self.completing:
            return
        main = [c for c in self.containers if not c.init]
        init_failed = any(
            c.done and c.record.failed() for c in self.containers if c.init and not c.sidecar
        )
        if not init_failed and not (main and all(c.done for c in main)):
            return
        self.completing = True
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        for container in reversed(self.containers):
            if not container.sidecar:
                continue
            container.done = True
            if container.running():
                self.rt.event(
                    self.pod,
                    "Killing",
                    f"Stopping container {container.name}",
                    node=self.node.name,
                )
                self._terminate(container, grace)

    def _waiting(self, container: Container, reason: str, message: str = "") -> None:
        container.record.state = "waiting"
        container.record.waiting_reason = reason
        container.record.waiting_message = message

    def _start(self, container: Container) -> None:
        record = container.record
        where = f"spec.{'initContainers' if container.init else 'containers'}{{{container.name}}}"
        try:
            image = specs.resolve_image(self.rt.images, container.spec.get("image", ""))
        except specs.ImageNotFound as exc:
            container.image_failures += 1
            reason = "ErrImagePull" if container.image_failures % 2 else "ImagePullBackOff"
            self._waiting(container, reason, str(exc))
            delay = min(
                self.rt.backoff_initial * 2 ** (container.image_failures // 2), self.rt.backoff_max
            )
            container.next_start = time.monotonic() + (1.0 if reason == "ErrImagePull" else delay)
            if reason == "ErrImagePull":
                self.rt.event(
                    self.pod,
                    "Failed",
                    str(exc),
                    warning=True,
                    field_path=where,
                    node=self.node.name,
                )
            return
        try:
            env = specs.container_env(
                self.pod,
                container.spec,
                secrets=self._lookup("Secret"),
                configmaps=self._lookup("ConfigMap"),
                api_host=self.rt.api_host,
                api_port=self.rt.api_port,
                pod_ip=self.pod_ip,
                host_ip=self.node.address,
                node_allocatable=self.node.allocatable,
            )
            ident = specs.identity(self.pod, container.spec, image)
            argv = specs.container_argv(container.spec, image, env)
            mounts = self._mounts(container)
        except specs.ConfigError as exc:
            if record.waiting_reason != "CreateContainerConfigError":
                self.rt.event(
                    self.pod,
                    "Failed",
                    f"Error: {exc}",
                    warning=True,
                    field_path=where,
                    node=self.node.name,
                )
            self._waiting(container, "CreateContainerConfigError", str(exc))
            container.next_start = time.monotonic() + 2.0
            return
        hostname, _ = specs.pod_hostname(self.pod)
        full_env = {"HOSTNAME": hostname, **image.env}
        full_env.setdefault("HOME", ident.home)
        full_env.update(env)
        if container.runs:
            record.restart_count += 1  # counted when the new container starts, as the kubelet
            container.backoff_updated = time.monotonic()  # the back-off runs from this start
        container.runs += 1
        attempt = record.restart_count
        cdir = self.dir / "containers" / container.name
        cdir.mkdir(parents=True, exist_ok=True)
        container.log_dir = self.dir / "logs" / container.name
        container.log_dir.mkdir(parents=True, exist_ok=True)
        container.term_file = cdir / f"{attempt}.termination-log"
        container.term_file.write_bytes(b"")
        container.term_file.chmod(0o666)
        mounts.append(
            {
                "source": str(container.term_file),
                "target": container.spec.get("terminationMessagePath")
                or specs.DEFAULT_TERMINATION_MESSAGE_PATH,
            }
        )
        container.error_file = cdir / f"{attempt}.start-error"
        container.error_file.unlink(missing_ok=True)
        sc = container.spec.get("securityContext") or {}
        container.cgroup = self.rt.cgroups.create(f"{self.uid}-{container.name}-{attempt}")
        if container.cgroup is not None:
            limit = ((container.spec.get("resources") or {}).get("limits") or {}).get("memory")
            if limit is not None:
                container.cgroup.set_memory_limit(int(specs.parse_quantity(limit)))
            container.oom_before = container.cgroup.oom_kills()
        shim_spec = {
            "mode": "run",
            "argv": argv,
            "env": full_env,
            "uid": ident.uid,
            "gid": ident.gid,
            "groups": list(ident.groups),
            "hostname": hostname,
            "netns": self.netns,
            "mounts": mounts,
            "workingDir": container.spec.get("workingDir") or image.working_dir or "/",
            "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
            "agentPid": os.getpid(),
            "errorFile": str(container.error_file),
            "cgroupProcs": container.cgroup.procs_file if container.cgroup else None,
            "execFd": None,
        }
        # the shim's copy of exec_w closes on exec (or its exit): then the container runs in
        # its namespaces, and hooks and exec probes may enter them
        exec_r, exec_w = os.pipe()
        shim_spec["execFd"] = exec_w
        spec_file = cdir / f"{attempt}.shim.json"
        spec_file.write_text(json.dumps(shim_spec))
        spec_file.chmod(0o600)
        try:
            container.proc = self.rt.spawner.popen(
                [sys.executable, "-I", "-S", SHIM, str(spec_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(exec_w,),
                env={},
            )
        finally:
            os.close(exec_w)
        LogWriter(container.proc, container.log_path(attempt), self.wake).start()
        try:
            select.select([exec_r], [], [], 30.0)
        finally:
            os.close(exec_r)
        container.started_mono = time.monotonic()
        container.attempt = attempt
        container.kill_deadline = None
        container.killing_reason = ""
        container.stopping = container.term_sent = container.pre_stop_running = False
        container.ordered = False
        record.container_id = "lab://" + secrets.token_hex(32)
        record.state = "running"
        record.started_at = now_iso()
        record.waiting_reason = ""
        record.waiting_message = ""
        record.terminated = None
        probes = {
            k: container.spec.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        record.started = not probes["startupProbe"]
        record.ready = not probes["readinessProbe"] and record.started
        container.handlers = Handlers(self, container, ident, image, full_env)
        if any(probes.values()):
            container.prober = Prober(self, container, ident, image, full_env)
            container.prober.start()
        post_start = (container.spec.get("lifecycle") or {}).get("postStart")
        if post_start:
            threading.Thread(
                target=self._post_start,
                args=(container, container.proc, post_start),
                name=f"poststart-{container.name}",
                daemon=True,
            ).start()
        logger.info(
            "pod %s/%s on %s: container %s started (pid %d, uid %d, restart %d): %s",
            self.namespace,
            self.pod_name,
            self.node.name,
            container.name,
            container.proc.pid,
            ident.uid,
            record.restart_count,
            " ".join(argv)[:200].replace("\n", " "),
        )
        self.rt.event(
            self.pod,
            "Started",
            f"Started container {container.name}",
            field_path=where,
            node=self.node.name,
        )

    def _mounts(self, container: Container) -> list[JSON]:
        assert self.volumes is not None
        mounts: list[JSON] = []
        for mount in container.spec.get("volumeMounts") or []:
            source = self.volumes.path(mount["name"])
            sub = mount.get("subPath") or ""
            if sub:
                if sub.startswith("/") or ".." in sub.split("/"):
                    raise specs.ConfigError(
                        f"subPath {sub!r}: must be a relative path without '..'"
                    )
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True, exist_ok=True)
                    source.chmod(0o777)
            mounts.append(
                {
                    "source": str(source),
                    "target": mount["mountPath"],
                    "readOnly": bool(mount.get("readOnly")),
                }
            )
        etc = self.dir / "etc"
        targets = {m["target"] for m in mounts}
        for name in ("hosts", "resolv.conf", "hostname"):
            if f"/etc/{name}" not in targets:
                mounts.append({"source": str(etc / name), "target": f"/etc/{name}"})
        return mounts

    def _reap(self) -> None:
        for container in self.containers:
            proc = container.proc
            if proc is None or proc.poll() is None:
                if (
                    container.kill_deadline is not None
                    and time.monotonic() >= container.kill_deadline
                ):
                    container.signal(signal.SIGKILL, group=True)
                    container.kill_deadline = None
                continue
            self._exited(container, proc.returncode)

    def _exited(self, container: Container, returncode: int) -> None:
        container.signal(signal.SIGKILL, group=True)  # what is left of the container
        if container.prober is not None:
            container.prober.stop()
            container.prober = None
        exit_code = returncode if returncode >= 0 else 128 - returncode
        start_error = ""
        if container.error_file is not None and container.error_file.exists():
            start_error = container.error_file.read_text()
        oom = False
        if container.cgroup is not None:
            oom = container.cgroup.oom_kills() > container.oom_before
            container.cgroup.remove()
            container.cgroup = None
        if oom and exit_code == 0:
            exit_code = 137
        reason = termination_reason(exit_code, oom, bool(start_error))
        message = start_error or self._termination_message(container, exit_code)
        record = container.record
        terminated: JSON = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": record.started_at,
            "finishedAt": now_iso(),
            "containerID": record.container_id,
        }
        if returncode < 0:
            terminated["signal"] = -returncode
        if message:
            terminated["message"] = message
        container.proc = None
        record.state = "terminated"
        record.terminated = terminated
        record.ready = False
        record.started = False
        policy = self.restart_policy
        if container.sidecar:  # restarted whatever the pod's restartPolicy and exit code
            restart = not self.deleting and not self.completing and not container.done
        else:
            restart = not self.deleting and (
                policy == "Always" or (policy == "OnFailure" and exit_code != 0)
            )
            if container.init and exit_code == 0:
                restart = False
        logger.info(
            "pod %s/%s: container %s exited %d (%s)%s",
            self.namespace,
            self.pod_name,
            container.name,
            exit_code,
            reason,
            ", restarting" if restart else "",
        )
        if not restart:
            container.done = True
            return
        self._schedule_restart(container)

    def _termination_message(self, container: Container, exit_code: int) -> str:
        text = ""
        if container.term_file is not None:
            with contextlib.suppress(OSError), container.term_file.open("rb") as handle:
                text = handle.read(MAX_TERMINATION_MESSAGE).decode("utf-8", "replace")
        policy = container.spec.get("terminationMessagePolicy") or "File"
        if not text and policy == "FallbackToLogsOnError" and exit_code != 0:
            lines = read_log_lines(container.log_path(container.attempt))[-FALLBACK_LOG_LINES:]
            tail = b"".join(line for _, _, line in lines)[-FALLBACK_LOG_BYTES:]
            text = tail.decode("utf-8", "replace")
        return text

    def _schedule_restart(self, container: Container) -> None:
        """The kubelet's crash-loop back-off (see the module docstring)."""
        now = time.monotonic()
        record = container.record
        finished = now
        if container.backoff and now - container.backoff_updated > 2 * self.rt.backoff_max:
            container.backoff = 0.0
        period = container.backoff
        if container.backoff and finished - container.backoff_updated < container.backoff:
            container.next_start = container.backoff_updated + container.backoff
            delay = container.next_start - now
            container.backoff = min(container.backoff * 2, self.rt.backoff_max)
        else:
            container.next_start = now
            delay = 0.0
            container.backoff = (
                min(container.backoff * 2, self.rt.backoff_max)
                if container.backoff
                else self.rt.backoff_initial
            )
        container.backoff_updated = container.next_start
        record.last_terminated = record.terminated
        if delay > 0:
            self._waiting(
                container,
                "CrashLoopBackOff",
                f"back-off {round(period)}s restarting failed container={container.name} "
                f"pod={self.pod_name}_{self.namespace}({self.uid})",
            )
            self.rt.event(
                self.pod,
                "BackOff",
                "Back-off restarting failed container "
                f"{container.name} in pod {self.pod_name}_{self.namespace}({self.uid})",
                warning=True,
                node=self.node.name,
            )
        else:
            self._waiting(container, "ContainerCreating")

    def kill_for_probe(self, container: Container, what: str) -> None:
        """A failed liveness/startup probe: kill the container; it restarts per policy."""
        grace = (container.spec.get(what) or {}).get("terminationGracePeriodSeconds")
        if grace is None:
            grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        self.rt.event(
            self.pod,
            "Killing",
            f"Container {container.name} failed "
            f"{'liveness' if what == 'livenessProbe' else 'startup'} probe, will be "
            "restarted",
            node=self.node.name,
        )
        self._terminate(container, float(grace))

    def _post_start(
        self, container: Container, proc: subprocess.Popen[bytes] | None, hook: JSON
    ) -> None:
        """``lifecycle.postStart``; a failure kills the container (it restarts per policy)."""
        handlers = container.handlers
        if handlers is None or handlers.run(hook, 30.0) or container.proc is not proc:
            return
        self.rt.event(
            self.pod,
            "FailedPostStartHook",
            f"PostStartHook failed for {container.name}",
            warning=True,
            node=self.node.name,
        )
        grace = (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        self._terminate(container, float(grace))

    def _terminate(self, container: Container, grace: float) -> None:
        """Stop a container as the kubelet's ``killContainer`` does: ``lifecycle.preStop``
        (if any) at once, then SIGTERM, SIGKILL at the end of the grace period.

        The hook's time counts against the grace period. A sidecar stopped with its pod
        (deletion, or the pod completing) waits, after its hook, for its turn: until every
        regular container and every later sidecar has exited, or the grace period ran out.
        A container that waited (hook or turn) gets 2 s after its SIGTERM at least. The
        SIGTERM itself is sent by the pod's loop (:meth:`_advance_stops`).
        """
        if not container.running() or container.stopping:
            return
        container.stopping = True
        container.term_sent = False
        container.stop_deadline = time.monotonic() + max(grace, 0.0)
        container.ordered = container.sidecar and (self.deleting or self.completing)
        pre_stop = (container.spec.get("lifecycle") or {}).get("preStop")
        handlers = container.handlers
        if pre_stop and handlers is not None:
            container.pre_stop_running = True
            proc = container.proc

            def run_pre_stop() -> None:
                if not handlers.run(pre_stop, max(grace, 1.0)) and container.proc is proc:
                    self.rt.event(
                        self.pod,
                        "FailedPreStopHook",
                        f"PreStopHook failed for {container.name}",
                        warning=True,
                        node=self.node.name,
                    )
                if container.proc is proc:
                    container.pre_stop_running = False
                self.wake()

            threading.Thread(
                target=run_pre_stop, name=f"prestop-{container.name}", daemon=True
            ).start()
        self.wake()

    def _advance_stops(self) -> None:
        """SIGTERM to each stopping container whose hook ran and whose turn came."""
        now = time.monotonic()
        for index, container in enumerate(self.containers):
            if not container.stopping or container.term_sent or not container.running():
                continue
            if now < container.stop_deadline:
                if container.pre_stop_running:
                    continue
                later = self.containers[index + 1 :] if container.ordered else []
                if any(c.running() and (c.sidecar or not c.init) for c in later):
                    continue
            waited = container.ordered or bool(
                (container.spec.get("lifecycle") or {}).get("preStop")
            )
            container.signal(signal.SIGTERM)
            container.term_sent = True
            container.kill_deadline = (
                max(container.stop_deadline, now + 2.0) if waited else container.stop_deadline
            )

    def _terminate_all(self, grace: float, reason: str) -> None:
        """Pod deletion: the regular (and running init) containers at once, the sidecars in
        reverse order after them (see :meth:`_terminate`)."""
        for container in self.containers:
            container.done = True
        for container in self.containers:
            if container.running():
                self.rt.event(
                    self.pod, reason, f"Stopping container {container.name}", node=self.node.name
                )
                self._terminate(container, grace)
        self._advance_stops()

    def _kill_all(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        for container in self.containers:
            container.done = True
            if container.running() and grace > 0:
                container.signal(signal.SIGTERM)
        while (
            grace > 0 and time.monotonic() < deadline and any(c.running() for c in self.containers)
        ):
            time.sleep(0.05)
        for container in self.containers:
            if container.proc is not None:
                container.signal(signal.SIGKILL, group=True)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    container.proc.wait(5)
            if container.prober is not None:
                container.prober.stop()
            if container.cgroup is not None:
                container.cgroup.remove()
                container.cgroup = None

    def _finish_deletion(self) -> None:
        """All containers stopped: a last status, then delete the pod (grace 0, UID check)."""
        if self.gone:
            return
        self.terminal = True
        self._sync_status()
        try:
            self.rt.api.request(
                "DELETE",
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        except ApiError as exc:
            if exc.status not in (404, 409):
                logger.warning("pod %s/%s: delete: %s", self.namespace, self.pod_name, exc)

    # --- status --------------------------------------------------------------------------

    def _phase(self) -> str:
        init = [c.record for c in self.containers if c.init]
        main = [c.record for c in self.containers if not c.init]
        return pod_phase(init, main, self.restart_policy, terminal=self.terminal)

    def status(self) -> JSON:
        init = [c.record for c in self.containers if c.init]
        main = [c.record for c in self.containers if not c.init]
        phase = self._phase()
        conditions = build_conditions(
            sandbox_ready=self.sandbox_ready and not self.terminal,
            init=init,
            main=main,
            phase=phase,
            previous=self._conditions_prev,
            gates_problem=readiness_gates_problem(self.pod),
        )
        self._conditions_prev = conditions
        status: JSON = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.node.address,
            "hostIPs": [{"ip": self.node.address}],
            "startTime": self.start_time,
            "containerStatuses": [r.to_status() for r in main],
        }
        if init:
            status["initContainerStatuses"] = [r.to_status() for r in init]
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        return status

    def _sync_status(self) -> None:
        if self.abandoned or self.gone:
            return
        status = self.status()
        comparable = json.dumps(status, sort_keys=True)
        if (
            self.last_status is not None
            and json.dumps(self.last_status, sort_keys=True) == comparable
        ):
            return
        try:
            self.rt.api.strategic_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
            self.last_status = status
        except ApiError as exc:
            if exc.status in (404, 409):  # gone, or replaced by a pod of another UID
                self.gone = True
            else:
                self._warn(f"status: {exc}")
        except Exception as exc:  # the API server is restarting: retry on the next tick
            self._warn(f"status: {exc!r}")

    def _warn(self, text: str) -> None:
        """A warning, at most every 10 s per pod (a failing write is retried every tick)."""
        if time.monotonic() - self._last_warning >= 10:
            self._last_warning = time.monotonic()
            logger.warning("pod %s/%s: %s", self.namespace, self.pod_name, text)


class Prober(threading.Thread):
    """Startup, liveness and readiness probes of one container run (kubelet prober rules)."""

    def __init__(
        self,
        worker: PodWorker,
        container: Container,
        ident: specs.Identity,
        image: specs.ImageConfig,
        env: Mapping[str, str],
    ) -> None:
        super().__init__(name=f"probe-{container.name}", daemon=True)
        self.worker = worker
        self.container = container
        self.handlers = Handlers(worker, container, ident, image, env)
        self._stop_event = threading.Event()
        self.proc = container.proc

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        spec = self.container.spec
        record = self.container.record
        started_at = time.monotonic()
        state: dict[str, JSON] = {}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = spec.get(kind)
            if probe:
                state[kind] = {
                    "probe": probe,
                    "next": started_at + float(probe.get("initialDelaySeconds", 0)),
                    "ok": 0,
                    "fail": 0,
                }
        while not self._stop_event.is_set() and self.container.proc is self.proc:
            now = time.monotonic()
            due = []
            for kind, entry in state.items():
                if kind != "startupProbe" and not record.started:
                    continue
                if kind == "startupProbe" and record.started:
                    continue
                if now >= entry["next"]:
                    due.append(kind)
            for kind in due:
                entry = state[kind]
                probe = entry["probe"]
                entry["next"] = time.monotonic() + float(probe.get("periodSeconds", 10))
                ok = self.handlers.run(probe, float(probe.get("timeoutSeconds", 1)))
                if self._stop_event.is_set() or self.container.proc is not self.proc:
                    return
                if ok:
                    entry["ok"] += 1
                    entry["fail"] = 0
                else:
                    entry["fail"] += 1
                    entry["ok"] = 0
                    self.worker.rt.event(
                        self.worker.pod,
                        "Unhealthy",
                        f"{kind.removesuffix('Probe').capitalize()} probe failed",
                        warning=True,
                        node=self.worker.node.name,
                    )
                success_threshold = int(probe.get("successThreshold", 1))
                failure_threshold = int(probe.get("failureThreshold", 3))
                if kind == "startupProbe":
                    if entry["ok"] >= 1:
                        record.started = True
                        if "readinessProbe" not in state:
                            record.ready = True
                        self.worker.wake()
                    elif entry["fail"] >= failure_threshold:
                        self.worker.kill_for_probe(self.container, kind)
                        return
                elif kind == "livenessProbe":
                    if entry["fail"] >= failure_threshold:
                        self.worker.kill_for_probe(self.container, kind)
                        return
                else:
                    if entry["ok"] >= success_threshold and not record.ready:
                        record.ready = True
                        self.worker.wake()
                    elif entry["fail"] >= failure_threshold and record.ready:
                        record.ready = False
                        self.worker.wake()
            self._stop_event.wait(0.1)


class Handlers:
    """Runs probe and lifecycle handlers against one container run."""

    def __init__(
        self,
        worker: PodWorker,
        container: Container,
        ident: specs.Identity,
        image: specs.ImageConfig,
        env: Mapping[str, str],
    ) -> None:
        self.worker = worker
        self.container = container
        self.identity = ident
        self.image = image
        self.env = dict(env)

    def run(self, probe: JSON, timeout: float) -> bool:
        """One probe or lifecycle handler: exec, httpGet, tcpSocket or sleep; True on success."""
        try:
            if "sleep" in probe:
                time.sleep(float((probe["sleep"] or {}).get("seconds", 0)))
                return True
            if "exec" in probe:
                return self._exec(probe["exec"].get("command") or [], timeout)
            if "httpGet" in probe:
                return self._http(probe["httpGet"], timeout)
            if "tcpSocket" in probe:
                port = self._port(probe["tcpSocket"].get("port"))
                host = probe["tcpSocket"].get("host") or self.worker.pod_ip
                with socket.create_connection((host, port), timeout=timeout):
                    return True
            logger.warning("handler %s: not supported (exec, httpGet, tcpSocket, sleep)", probe)
            return False
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for item in self.container.spec.get("ports") or []:
            if item.get("name") == port:
                return int(item["containerPort"])
        raise ValueError(f"named port {port!r} not found")

    def _http(self, get: JSON, timeout: float) -> bool:
        host = get.get("host") or self.worker.pod_ip
        port = self._port(get.get("port"))
        connection: http.client.HTTPConnection
        if (get.get("scheme") or "HTTP").upper() == "HTTPS":
            context = ssl._create_unverified_context()
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        headers = {"User-Agent": "kube-probe/1.33", "Accept": "*/*"}
        headers.update({h["name"]: h["value"] for h in get.get("httpHeaders") or []})
        try:
            connection.request("GET", get.get("path") or "/", headers=headers)
            return 200 <= connection.getresponse().status < 400
        finally:
            connection.close()

    def _exec(self, command: list[str], timeout: float) -> bool:
        proc = self.container.proc
        if proc is None or not command:
            return False
        cdir = self.worker.dir / "containers" / self.container.name
        spec_file = cdir / f"probe-{threading.get_ident()}.json"
        spec_file.write_text(
            json.dumps(
                {
                    "mode": "enter",
                    "pid": proc.pid,
                    "argv": command,
                    "env": self.env,
                    "uid": self.identity.uid,
                    "gid": self.identity.gid,
                    "groups": list(self.identity.groups),
                    "workingDir": self.container.spec.get("workingDir")
                    or self.image.working_dir
                    or "/",
                }
            )
        )
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", SHIM, str(spec_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={},
        )
        try:
            return child.wait(timeout) == 0
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return False

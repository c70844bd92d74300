"""A stand-in for the Kubeflow training operator and the kubelet, for the lab.

It watches ``PyTorchJob``s (``kubeflow.org/v1``) in the lab's API and runs each as real
local processes with :class:`tidetune.torchrun_nodes.TorchrunNodes` — one process
tree per replica (Master + Workers), each running the container's command with the
environment the real controller injects (``MASTER_ADDR``, ``MASTER_PORT``,
``WORLD_SIZE``, ``RANK``, ``PET_*``) and the container's ``env``, with ``secretKeyRef``
resolved from the job's own namespace as the kubelet would. The spec ConfigMap is
written to a folder that stands in for its volume mount.

It writes status as the real controller does: conditions ``Created``, ``Running``,
``Suspended``, ``Succeeded``, ``Failed`` (type/status/reason/message/lastUpdateTime/
lastTransitionTime), ``replicaStatuses``, ``startTime``, ``completionTime``.

- ``runPolicy.suspend: true``: the pods are deleted (SIGTERM to every replica, the
  grace period, then SIGKILL) and the job is ``Suspended``; ``false`` starts them again.
- A replica that exits non-zero (``restartPolicy: Never``) fails the job; all succeed:
  ``Succeeded``. The real controller's message carries no exit code, nor does this one.
- A lost pod: annotate the job ``lab.tidetune.io/kill-node=<replica index>`` (or call
  :meth:`KubeflowStandIn.kill_node`) and that replica's whole process tree is SIGKILLed,
  as when a node is reclaimed.
- Deleting the job stops its processes.

Differences from the real thing: no Pods or Services objects are created (the operator
reads what it needs from the job's status and the run location); ``nprocPerNode`` must be
a number; there is no scheduling (every replica starts at once on this machine).
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import pathlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidetune.layout import SPEC_MOUNT
from tidetune.torchrun_nodes import (
    DEFAULT_ENTRY_MODULE,
    NodesSpec,
    RunningNodes,
    TorchrunNodes,
    free_port,
)

if TYPE_CHECKING:
    from tests.lab.lab import Lab

log = logging.getLogger(__name__)

KILL_ANNOTATION = "lab.tidetune.io/kill-node"
#: the container command the operator builds (tidetune_operator.builders.trainer_command)
ENTRY = ["python", "-m", DEFAULT_ENTRY_MODULE]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Run:
    """One PyTorchJob's local processes."""

    job: RunningNodes | None = None
    suspended: bool = False
    finished: bool = False
    killed_nodes: set[int] = field(default_factory=set)
    stopping: threading.Thread | None = None


class KubeflowStandIn:
    """The lab component (see the module doc)."""

    name = "kubeflow"

    def __init__(
        self,
        poll_interval: float = 0.25,
        grace_seconds: float = 60.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.poll_interval = poll_interval
        self.grace_seconds = grace_seconds
        #: added to every trainer's environment (e.g. the trainer's step-delay test facility)
        self.extra_env = dict(extra_env or {})
        self.runs: dict[tuple[str, str], _Run] = {}
        #: the metrics port each running job's trainer got (the PyTorchJob asks for one fixed
        #: port, as every pod has its own IP; here they share 127.0.0.1)
        self.metrics_ports: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lab: Lab | None = None
        self._api: Any = None
        self._core: Any = None
        self._workdir = pathlib.Path(".")

    # -- component protocol

    def start(self, lab: Lab) -> None:
        from kubernetes import client, config

        self._lab = lab
        api_client = config.new_client_from_config(config_file=str(lab.kubeconfig))
        self._api = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._workdir = lab.workdir / "pods"
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="kubeflow-stand-in", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for run in self.runs.values():
            if run.job is not None and run.job.poll() is None:
                run.job.stop(grace=5.0)

    # -- test helpers

    def kill_node(self, namespace: str, name: str, node_rank: int = 0) -> None:
        """SIGKILL one replica's process tree, as losing its node does."""
        run = self.runs.get((namespace, name))
        if run is not None and run.job is not None and run.job.poll() is None:
            run.killed_nodes.add(node_rank)
            run.job.kill_node(node_rank)

    # -- the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception:
                log.exception("kubeflow stand-in: sync failed")
            self._stop.wait(self.poll_interval)

    def _sync(self) -> None:
        listing = self._api.list_cluster_custom_object("kubeflow.org", "v1", "pytorchjobs")
        seen = set()
        for obj in listing.get("items", []):
            meta = obj["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            self._reconcile(key, obj)
        for key in list(self.runs):
            if key not in seen:  # deleted: its pods go too
                run = self.runs.pop(key)
                if run.job is not None and run.job.poll() is None:
                    run.job.stop(grace=self.grace_seconds)

    def _reconcile(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        run = self.runs.setdefault(key, _Run())
        status = obj.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        if run.finished or any(
            conditions.get(t, {}).get("status") == "True" for t in ("Succeeded", "Failed")
        ):
            run.finished = True
            return
        suspend = bool(((obj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))
        if "Created" not in conditions:
            self._set_conditions(
                key,
                obj,
                [("Created", "True", "PyTorchJobCreated", f"PyTorchJob {key[1]} is created.")],
            )
        kill = (obj["metadata"].get("annotations") or {}).get(KILL_ANNOTATION)
        if kill is not None and run.job is not None and run.job.poll() is None:
            rank = int(kill)
            if rank not in run.killed_nodes:
                self.kill_node(*key, node_rank=rank)
        if suspend:
            if run.job is not None and run.job.poll() is None and run.stopping is None:
                job = run.job
                run.stopping = threading.Thread(
                    target=job.stop, kwargs={"grace": self.grace_seconds}, daemon=True
                )
                run.stopping.start()
            if run.job is None or run.job.poll() is not None:
                run.job, run.stopping = None, None
                if conditions.get("Suspended", {}).get("status") != "True":
                    self._set_conditions(
                        key,
                        obj,
                        [
                            (
                                "Running",
                                "False",
                                "PyTorchJobSuspended",
                                f"PyTorchJob {key[1]} is suspended.",
                            ),
                            (
                                "Suspended",
                                "True",
                                "PyTorchJobSuspended",
                                f"PyTorchJob {key[1]} is suspended.",
                            ),
                        ],
                        replica_active=0,
                    )
            return
        if run.job is None:
            try:
                run.job = self._start(key, obj)
            except _PodError as err:
                self._set_conditions(key, obj, [("Failed", "True", "PodConfigError", str(err))])
                run.finished = True
                return
            run.killed_nodes.clear()
            updates = [("Running", "True", "PyTorchJobRunning", f"PyTorchJob {key[1]} is running.")]
            if conditions.get("Suspended", {}).get("status") == "True":
                updates.insert(
                    0,
                    ("Suspended", "False", "PyTorchJobResumed", f"PyTorchJob {key[1]} is resumed."),
                )
            self._set_conditions(key, obj, updates, replica_active=len(run.job.pids), start=True)
            return
        code = run.job.poll()
        if code is None:
            return
        codes = run.job.returncodes()
        if all(c == 0 for c in codes):
            self._set_conditions(
                key,
                obj,
                [
                    (
                        "Running",
                        "False",
                        "PyTorchJobSucceeded",
                        f"PyTorchJob {key[1]} is successfully completed.",
                    ),
                    (
                        "Succeeded",
                        "True",
                        "PyTorchJobSucceeded",
                        f"PyTorchJob {key[1]} is successfully completed.",
                    ),
                ],
                replica_active=0,
                complete=True,
            )
        else:
            failed = sum(1 for c in codes if c != 0)
            message = f"PyTorchJob {key[1]} is failed because {failed} replica(s) failed."
            self._set_conditions(
                key,
                obj,
                [
                    ("Running", "False", "PyTorchJobFailed", message),
                    ("Failed", "True", "PyTorchJobFailed", message),
                ],
                replica_active=0,
                complete=True,
            )
        run.finished = True

    # -- pods

    def _start(self, key: tuple[str, str], obj: dict[str, Any]) -> RunningNodes:
        namespace, name = key
        replicas = obj["spec"]["pytorchReplicaSpecs"]
        master = replicas["Master"]["template"]["spec"]
        container = master["containers"][0]
        command = list(container.get("command") or []) + list(container.get("args") or [])
        if command[: len(ENTRY)] != ENTRY:
            raise _PodError(
                f"the lab runs only the TideTune trainer entry point, not {command[:3]}"
            )
        pod_dir = self._workdir / namespace / name
        spec_dir = pod_dir / "etc-tidetune"
        spec_dir.mkdir(parents=True, exist_ok=True)
        for volume in master.get("volumes") or []:
            cm = volume.get("configMap")
            if cm:
                data = self._core.read_namespaced_config_map(cm["name"], namespace).data or {}
                for file, text in data.items():
                    (spec_dir / file).write_text(text)
        args = [a.replace(SPEC_MOUNT, str(spec_dir)) for a in command[len(ENTRY) :]]
        if "--metrics-port" in args:  # every "pod" shares this machine: give each its own port
            i = args.index("--metrics-port") + 1
            self.metrics_ports[key] = free_port()
            args[i] = str(self.metrics_ports[key])
        env = self._container_env(namespace, container)
        env["HOME"] = str(pod_dir)
        env["TIDETUNE_TERMINATION_LOG"] = str(pod_dir / "termination-log")
        lab_env = self._lab.env() if self._lab is not None else dict(os.environ)
        env = {**lab_env, **env, **self.extra_env}
        workers = int((replicas.get("Worker") or {}).get("replicas", 0))
        launch = NodesSpec(
            name=name,
            args=args,
            nnodes=1 + workers,
            nproc_per_node=int(obj["spec"].get("nprocPerNode", "1")),
            env=env,
            cwd=str(pod_dir),
        )
        launcher = TorchrunNodes(log_dir=pod_dir)
        return launcher.start(launch)

    def _container_env(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if not ref:
                continue
            try:
                secret = self._core.read_namespaced_secret(ref["name"], namespace)
            except Exception as err:
                if ref.get("optional"):
                    continue
                raise _PodError(f"secret {ref['name']} not found: {err}") from err
            raw = (secret.data or {}).get(ref["key"])
            if raw is None:
                if ref.get("optional"):
                    continue
                raise _PodError(
                    f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}"
                )
            env[item["name"]] = base64.b64decode(raw).decode()
        return env

    # -- status

    def _set_conditions(
        self,
        key: tuple[str, str],
        obj: dict[str, Any],
        updates: list[tuple[str, str, str, str]],
        *,
        replica_active: int | None = None,
        start: bool = False,
        complete: bool = False,
    ) -> None:
        status = dict(obj.get("status") or {})
        conditions = [dict(c) for c in status.get("conditions") or []]
        now = _now()
        for ctype, value, reason, message in updates:
            for cond in conditions:
                if cond["type"] == ctype:
                    if cond.get("status") != value:
                        cond["lastTransitionTime"] = now
                    cond.update(status=value, reason=reason, message=message, lastUpdateTime=now)
                    break
            else:
                conditions.append(
                    {
                        "type": ctype,
                        "status": value,
                        "reason": reason,
                        "message": message,
                        "lastUpdateTime": now,
                        "lastTransitionTime": now,
                    }
                )
        status["conditions"] = conditions
        if replica_active is not None:
            status["replicaStatuses"] = {"Master": {"active": min(replica_active, 1)}}
        if start and not status.get("startTime"):
            status["startTime"] = now
        if complete:
            status["completionTime"] = now
        obj["status"] = status
        self._api.patch_namespaced_custom_object_status(
            "kubeflow.org", "v1", key[0], "pytorchjobs", key[1], {"status": status}
        )


class _PodError(Exception):
    """A pod could not start (a missing Secret key, a foreign image): the job fails."""

"""The lab: a real Kubernetes cluster on this machine, for the end-to-end tests and for people.

``Lab(workdir).start()`` brings up, in this order:

1. a bridge of its own (:mod:`tests.lab.network`: ``ttlab<slot>``, ``10.<200+slot>.0.0/16``);
2. the control plane (:mod:`tests.lab.controlplane`: etcd, kube-apiserver on the bridge's
   gateway address, port 443, kube-controller-manager, kube-scheduler);
3. then, side by side: a moto S3 server on the gateway (bucket ``tidetune``), the node agent
   (:mod:`tests.lab.nodeagent`: the Nodes in ``nodes``, their pods run as local processes),
   the Kubeflow training operator v1 and Kueue with their webhooks (:mod:`tests.lab.addons`);
   with ``trainer``, Kubeflow Trainer v2 and JobSet too (or only their CRDs, so that Kueue's
   TrainJob integration is on; :meth:`Lab.start_trainer` starts them later, on demand).

It writes ``DIR/kubeconfig`` (the admin's) and ``DIR/lab.json`` — the API URL, the S3
endpoint and keys, the node agent's test hooks, ``gpuPool`` (the nodeSelector, tolerations
and GPUs per node of the GPU nodes, to write an IdlePool for them) and how long each part
took to start. Every process's output is in ``DIR/logs`` (the node agent's pods under
``DIR/agent``). The TideTune operator is not part of the lab: :class:`tests.lab.deploy.Stack`
installs it with its Helm chart, as a user would.

The lab needs root (a bridge, a network namespace per pod) and the binaries that
``.ci/setup`` builds into ``.tools``. Pods run the repository's venv under their own users
(the chart's ``runAsUser``), so the directories above the venv's interpreter must be
traversable by other users: :meth:`Lab.start` adds ``o+x`` where it is missing (``/root``
on these machines) and says so in its log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import pathlib
import queue
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from tests.lab import addons
from tests.lab.controlplane import TOOLS, ControlPlane
from tests.lab.images import image_table
from tests.lab.network import LabNetwork
from tests.lab.nodeagent.client import NodeAgentClient
from tests.lab.processes import Supervisor
from tests.support.s3 import S3Endpoint, start_s3

__all__ = ["DEFAULT_NODES", "GPU_POOL", "REPO_ROOT", "Lab", "LabError"]

logger = logging.getLogger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

#: The GPU nodes' idle pool, as an IdlePool would select and tolerate them.
GPU_POOL: dict[str, Any] = {
    "nodeSelector": {"tidetune.io/lab-pool": "night"},
    "tolerations": [
        {"key": "tidetune.io/online-serving", "operator": "Exists", "effect": "NoSchedule"}
    ],
    "gpusPerNode": 2,
}


def gpu_node(name: str) -> dict[str, Any]:
    """A node of the GPU pool: its label, the online-serving taint, 2 ``nvidia.com/gpu``."""
    return {
        "name": name,
        "labels": dict(GPU_POOL["nodeSelector"]),
        "taints": [{"key": "tidetune.io/online-serving", "value": "day", "effect": "NoSchedule"}],
        "capacity": {
            "cpu": "16",
            "memory": "64Gi",
            "pods": "40",
            "nvidia.com/gpu": str(GPU_POOL["gpusPerNode"]),
        },
    }


def cpu_node(name: str) -> dict[str, Any]:
    """A plain node: where the operator and everything else without a GPU runs."""
    return {
        "name": name,
        "labels": {},
        "taints": [],
        "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
    }


DEFAULT_NODES: tuple[dict[str, Any], ...] = (
    gpu_node("gpu-0"),
    gpu_node("gpu-1"),
    cpu_node("cpu-0"),
)


class LabError(RuntimeError):
    """A part of the lab did not start; the message says which and ends with its log."""


class Lab:
    """A cluster on this machine (see the module doc).

    Args:
        workdir: where everything the lab writes goes.
        nodes: the Nodes the node agent registers (``gpu_node``/``cpu_node`` dicts; addresses
            and pod CIDRs are assigned here).
        kubeflow: run the training operator (``True``), install only its CRDs (``"crds"``:
            PyTorchJobs are stored and nothing runs them), or nothing (``False``).
        kueue: run Kueue with its webhooks.
        trainer: run Kubeflow Trainer v2 and JobSet (``True``), install only their CRDs
            (``"crds"``: Kueue's TrainJob integration starts; :meth:`start_trainer` runs the
            controllers when a test needs them), or nothing (``False``).
        s3: run the S3 server.
        agent: node agent settings that replace the lab's (``restartBackoff``, ``images``:
            see :mod:`tests.lab.nodeagent`), for tests of the node agent itself.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        *,
        nodes: Sequence[Mapping[str, Any]] = DEFAULT_NODES,
        kubeflow: bool | str = True,
        kueue: bool = True,
        trainer: bool | str = False,
        s3: bool = True,
        agent: Mapping[str, Any] | None = None,
    ) -> None:
        if kubeflow not in (True, False, "crds"):
            raise ValueError(f"kubeflow: True, False or 'crds', not {kubeflow!r}")
        if trainer not in (True, False, "crds"):
            raise ValueError(f"trainer: True, False or 'crds', not {trainer!r}")
        self.workdir = pathlib.Path(workdir).resolve()
        self.node_specs = [dict(n) for n in nodes]
        self.with_kubeflow = kubeflow
        self.with_kueue = kueue
        self.with_trainer = trainer
        self.with_s3 = s3
        self.agent_settings = dict(agent or {})
        self.network = LabNetwork()
        self.controlplane: ControlPlane | None = None
        self.supervisor: Supervisor | None = None
        self.s3: S3Endpoint | None = None
        self.hooks: NodeAgentClient | None = None
        self.hooks_url = ""
        self.startup_seconds: dict[str, float] = {}
        self._exit = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._attached = False

    # -- where things are ---------------------------------------------------------------------

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.workdir / "kubeconfig"

    @property
    def info_path(self) -> pathlib.Path:
        return self.workdir / "lab.json"

    @property
    def api_url(self) -> str:
        assert self.controlplane is not None, "the lab is not started"
        return self.controlplane.url

    @property
    def audit_log(self) -> pathlib.Path:
        assert self.controlplane is not None, "the lab is not started"
        return self.controlplane.audit_log

    @property
    def pki(self) -> pathlib.Path:
        """The cluster CA (``cluster-ca.crt``) and the admin's client pair (``admin.crt/key``)."""
        return self.workdir / "cluster" / "pki"

    def host_env(self) -> dict[str, str]:
        """The environment of a host process that talks to the cluster as the admin."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "KUBECONFIG": str(self.kubeconfig),
        }

    def info(self) -> dict[str, Any]:
        """What ``lab.json`` holds."""
        return {
            "kubeconfig": str(self.kubeconfig),
            "apiUrl": self.controlplane.url if self.controlplane else None,
            "caFile": str(self.pki / "cluster-ca.crt"),
            "s3": self.s3.as_dict() if self.s3 is not None else None,
            "hooks": self.hooks_url,
            "gpuPool": GPU_POOL,
            "nodes": [n["name"] for n in self.node_specs],
            "network": {"bridge": self.network.bridge, "gateway": self.network.gateway},
            "trainer": self.with_trainer,
            "startupSeconds": self.startup_seconds,
            "logs": str(self.workdir / "logs"),
        }

    def write_info(self) -> None:
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.info(), indent=2) + "\n")
        tmp.replace(self.info_path)

    @classmethod
    def attach(cls, workdir: str | pathlib.Path) -> Lab:
        """A lab another process started (``python -m tests.lab --dir DIR``), from its
        ``lab.json``: for tests run against a lab kept up between runs
        (``TIDETUNE_LAB_DIR=DIR pytest …``). :meth:`stop` leaves it running."""
        lab = cls(workdir)
        try:
            info = json.loads(lab.info_path.read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"{lab.info_path}: no running lab there ({exc})") from exc
        api = urllib.parse.urlsplit(info["apiUrl"])
        lab.controlplane = ControlPlane(
            lab.workdir / "cluster", host=api.hostname or "", port=api.port or 443
        )
        lab.network.slot = int(info["network"]["bridge"].removeprefix("ttlab"))
        if info.get("s3"):
            s3 = info["s3"]
            lab.s3 = S3Endpoint(
                endpoint=s3["endpoint"],
                access_key=s3["accessKey"],
                secret_key=s3["secretKey"],
                bucket=s3["bucket"],
                region=s3.get("region", "us-east-1"),
            )
        lab.hooks_url = info.get("hooks") or ""
        lab.hooks = NodeAgentClient(lab.hooks_url) if lab.hooks_url else None
        lab.startup_seconds = dict(info.get("startupSeconds") or {})
        lab.with_trainer = info.get("trainer", False)
        lab._attached = True
        return lab

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 240.0) -> Lab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["total"] = round(time.monotonic() - began, 1)
        self.write_info()
        logger.info("lab: up in %.1f s %s", self.startup_seconds["total"], self.startup_seconds)
        return self

    def _start(self, timeout: float) -> None:
        _make_interpreter_reachable()
        self.network.create()
        self._exit.callback(self.network.delete)
        with self._timed("controlPlane"):
            self.controlplane = ControlPlane(
                self.workdir / "cluster", host=self.network.gateway, port=443
            ).start(timeout)
        self._exit.callback(self.controlplane.stop)
        self.kubeconfig.write_text(self.controlplane.kubeconfig.read_text())
        self.kubeconfig.chmod(0o600)
        self.supervisor = Supervisor(self.workdir / "logs", on_change=self.write_info)
        self._exit.callback(self.supervisor.stop, 20)
        parts = {"nodeAgent": self._start_agent}
        if self.with_s3:
            parts["s3"] = self._start_s3
        if self.with_kubeflow == "crds":
            parts["kubeflow"] = lambda: addons.install_kubeflow(self, controller=False)
        elif self.with_kubeflow:
            parts["kubeflow"] = lambda: addons.install_kubeflow(self)
        if self.with_kueue and self.with_trainer:
            # Trainer's CRDs first: Kueue's TrainJob integration starts with Kueue
            def kueue() -> None:
                addons.install_trainer_crds(self)
                addons.install_kueue(self, trainjob=True)

            parts["kueue"] = kueue
        elif self.with_kueue:
            parts["kueue"] = lambda: addons.install_kueue(self)
        elif self.with_trainer:
            parts["trainerCrds"] = lambda: addons.install_trainer_crds(self)
        with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
            futures = {
                name: pool.submit(self._run_timed, name, part) for name, part in parts.items()
            }
            errors = []
            for name, future in futures.items():
                try:
                    future.result(timeout)
                except Exception as exc:
                    errors.append(f"{name}: {exc}")
        if errors:
            raise LabError("the lab did not start:\n" + "\n".join(errors))
        if self.with_trainer is True:
            self.with_trainer = "crds"
            self.start_trainer()

    def start_trainer(self) -> None:
        """Run Kubeflow Trainer v2 and JobSet (their CRDs too, if missing); nothing when they
        run already. Kueue's TrainJob integration is on only if the lab started with
        ``trainer`` (``"crds"`` is enough)."""
        with self._lock:
            if self.with_trainer is True:
                return
            if self._attached or self.supervisor is None:
                raise LabError(
                    "this lab does not run Kubeflow Trainer, and an attached lab cannot start "
                    "it: start the lab with 'python -m tests.lab --trainer'"
                )
            began = time.monotonic()
            try:
                addons.install_trainer(self)
            except Exception as exc:
                raise LabError(f"Kubeflow Trainer did not start: {exc}") from exc
            self.with_trainer = True
            self.startup_seconds["trainer"] = round(time.monotonic() - began, 1)
            self.write_info()

    def on_stop(self, callback: Any) -> None:
        """Call ``callback()`` when the lab stops (before what was started earlier stops)."""
        self._exit.callback(callback)

    def stop(self) -> None:
        """Stop everything the lab started (pods first, the control plane, the bridge last)."""
        if self._attached:
            return
        self._exit.close()
        self.controlplane = None
        self.supervisor = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def _timed(self, name: str) -> Any:
        began = time.monotonic()
        yield
        with self._lock:
            self.startup_seconds[name] = round(time.monotonic() - began, 1)

    def _run_timed(self, name: str, part: Any) -> None:
        with self._timed(name):
            part()

    def _start_s3(self) -> None:
        self.s3 = self._exit.enter_context(start_s3("tidetune", host=self.network.gateway))

    def _start_agent(self, timeout: float = 60.0) -> None:
        assert self.supervisor is not None
        nodes = [self._node_config(index) for index in range(len(self.node_specs))]
        config = {
            "workdir": str(self.workdir / "agent"),
            "bridge": self.network.bridge,
            "subnet": self.network.subnet,
            "gateway": self.network.gateway,
            "apiserver": {"host": self.network.gateway, "port": 443},
            "clusterDomain": "cluster.local",
            "dns": {"address": self.network.dns},
            "hooks": {"port": 0},
            "nodes": nodes,
            **self.agent_settings,
        }
        if "images" not in config:
            config["images"] = image_table(TOOLS / "busybox")
        path = self.workdir / "agent.json"
        path.write_text(json.dumps(config, indent=2))
        env = {**self.host_env(), "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        ready_line: queue.Queue[str] = queue.Queue()
        proc = self.supervisor.add(
            "nodeagent",
            [
                sys.executable,
                "-m",
                "tests.lab.nodeagent",
                f"--kubeconfig={self.kubeconfig}",
                f"--config={path}",
            ],
            env,
            cwd=REPO_ROOT,
        )
        log = proc.log_path
        assert log is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("ready "):
                    ready_line.put(line)
                    break
            if not ready_line.empty():
                break
            if proc.exit_codes:
                raise LabError(
                    f"the node agent exited with {proc.exit_codes[-1]}:\n{proc.log_tail()}"
                )
            time.sleep(0.2)
        else:
            raise LabError(f"the node agent was not ready in {timeout:.0f} s:\n{proc.log_tail()}")
        self.hooks_url = json.loads(ready_line.get().split(" ", 1)[1])["hooks"]
        self.hooks = NodeAgentClient(self.hooks_url)
        self._wait_nodes_ready([n["name"] for n in nodes], timeout)

    def _node_config(self, index: int) -> dict[str, Any]:
        """Node ``index`` as the node agent takes it: its spec, address and pod CIDR."""
        return {
            "address": self.network.node_address(index),
            "podCIDR": self.network.pod_cidr(index),
            **self.node_specs[index],
        }

    def _wait_nodes_ready(self, names: Iterable[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = set(names)
        while time.monotonic() < deadline:
            out = self.kubectl("get", "nodes", "-o", "json")
            if out.returncode == 0:
                ready = {
                    n["metadata"]["name"]
                    for n in json.loads(out.stdout)["items"]
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in n.get("status", {}).get("conditions", [])
                    )
                }
                if wanted <= ready:
                    return
            time.sleep(0.3)
        raise LabError(f"nodes {sorted(wanted)} not Ready in {timeout:.0f} s")

    # -- talking to it --------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        check: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``.tools/bin/kubectl`` as the admin (``check``: raise on a non-zero exit)."""
        assert self.controlplane is not None, "the lab is not started"
        result = self.controlplane.kubectl(
            *args, input=input, timeout=timeout, check=False, env=env
        )
        if check and result.returncode != 0:
            raise LabError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply_documents(self, docs: Iterable[Mapping[str, Any]], timeout: float = 60) -> None:
        """Server-side apply ``docs`` as admin: CRDs first (until Established), then the rest."""
        docs = [d for d in docs if d]
        crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
        rest = [d for d in docs if d.get("kind") != "CustomResourceDefinition"]
        if crds:
            self._apply(crds, timeout)
            names = [f"crd/{d['metadata']['name']}" for d in crds]
            deadline = time.monotonic() + timeout
            while True:
                out = self.kubectl(
                    "wait",
                    "--for=condition=Established",
                    f"--timeout={int(timeout)}s",
                    *names,
                    timeout=timeout + 10,
                )
                # right after the apply a CRD may have no status yet: kubectl wait then errs
                # ("accessor error") instead of waiting; ask again
                if out.returncode == 0:
                    break
                if "accessor error" not in out.stderr or time.monotonic() > deadline:
                    raise LabError(f"CRDs not Established: {out.stderr.strip()}")
                time.sleep(0.5)
        if rest:
            self._apply(rest, timeout)

    def _apply(self, docs: Sequence[Mapping[str, Any]], timeout: float) -> None:
        text = yaml.safe_dump_all([dict(d) for d in docs])
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=tidetune-lab",
            "-f",
            "-",
            input=text,
            timeout=timeout,
            check=True,
        )

    # -- the test hooks of the node agent -------------------------------------------------------

    def _hooks(self) -> NodeAgentClient:
        if self.hooks is None:
            raise LabError("the lab's node agent is not running")
        return self.hooks

    def reclaim_node(self, name: str, *, wait: bool = True) -> dict[str, Any]:
        """The pool takes a node back: cordon, evict with grace periods, delete the Node."""
        return self._hooks().reclaim_node(name, wait=wait)

    def lose_node(self, name: str) -> dict[str, Any]:
        """A node dies: its pods' processes are SIGKILLed and the Node is deleted."""
        return self._hooks().lose_node(name)

    def restore_node(self, name: str) -> None:
        """Register a node of ``nodes`` again after it was reclaimed or lost."""
        for index, spec in enumerate(self.node_specs):
            if spec["name"] == name:
                self._hooks().add_node(self._node_config(index))
                self._wait_nodes_ready([name], 60)
                return
        raise LabError(
            f"no node {name!r} in this lab; it has {[n['name'] for n in self.node_specs]}"
        )

    def kill_container(
        self, namespace: str, pod: str, container: str, signal: int | str = 9
    ) -> None:
        """Signal a container's main process (SIGKILL by default); it restarts per its policy."""
        self._hooks().kill_container(namespace, pod, container, signal)


def pod_main_pids(pod: str) -> list[int]:
    """The pids of processes running in pod ``pod`` (their environment has HOSTNAME=<pod>)."""
    wanted = f"HOSTNAME={pod}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return sorted(pids)


def _make_interpreter_reachable() -> None:
    """Let pods' users (non-root) run this venv: ``o+x`` on the directories above it."""
    target = pathlib.Path(os.path.realpath(sys.executable))
    for directory in [*reversed(target.parents), pathlib.Path(sys.prefix)]:
        with contextlib.suppress(OSError):
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(mode | stat.S_IXOTH)
                logger.warning(
                    "lab: added o+x to %s so that pods running as other users can reach %s",
                    directory,
                    target,
                )

"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, controller manager,
scheduler — the binaries ``.ci/setup-kube.sh`` builds from their Go modules into ``.tools/bin``.

The API server runs as on a kubeadm cluster, minus what needs a container runtime: TLS with
the lab's CA, client certificates and ServiceAccount tokens for authentication,
``--authorization-mode=Node,RBAC``, the default admission plugins plus
``OwnerReferencesPermissionEnforcement`` (PodSecurity is among the defaults), an audit log of
every request (``DIR/audit.log``), and ``--enable-aggregator-routing`` so that webhooks behind
a Service are dialled at that Service's endpoints (the lab's webhooks run on the host; their
Services have manual Endpoints). The controller manager runs every default controller with one
ServiceAccount credential per controller; the scheduler is the default one.

``ControlPlane(workdir).start()`` returns once ``/readyz`` answers and the default
ServiceAccount exists; ``kubeconfig`` is the admin's (group ``system:masters``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence

import yaml

from tests.lab.pki import CertificateAuthority, KeyPair, write_service_account_keys
from tests.lab.processes import Supervisor

__all__ = ["TOOLS", "ControlPlane", "free_port", "tool", "write_kubeconfig"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / ".tools"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Every request, at Metadata level: who did what to which resource (RBAC test, benchmark).
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def tool(name: str) -> pathlib.Path:
    """A binary from ``.tools/bin``; a clear error when ``.ci/setup`` has not built it."""
    path = TOOLS / "bin" / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"{path} is missing: run 'bash .ci/setup' (it builds the lab's Kubernetes binaries "
            "from their Go modules with .ci/setup-kube.sh)"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(
    path: pathlib.Path,
    server: str,
    ca: pathlib.Path,
    client: KeyPair | None = None,
    token: str | None = None,
    user: str = "admin",
) -> pathlib.Path:
    """A kubeconfig with one cluster/user/context named ``lab``."""
    auth: dict[str, str] = {}
    if client is not None:
        auth = {"client-certificate": str(client.cert), "client-key": str(client.key)}
    if token is not None:
        auth = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "lab", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler (see the module doc).

    Args:
        workdir: where certificates, etcd's data, kubeconfigs, the audit log and logs go.
        host: the address the API server listens on (loopback, or the lab bridge's address so
            that pods reach it too).
        port: its port (a free one by default).
        controllers: start the controller manager and scheduler too (the CRD tests need only
            etcd and the API server).
        extra_apiserver_args: more ``--flag=value`` arguments.
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        controllers: bool = True,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.controllers = controllers
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.pki = workdir / "pki"
        self.supervisor: Supervisor | None = None
        self.ca: CertificateAuthority | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> pathlib.Path:
        return self.workdir / "audit.log"

    @property
    def ca_file(self) -> pathlib.Path:
        assert self.ca is not None
        return self.ca.cert

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(self.workdir / "logs")
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop(grace=5)
            self.supervisor = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, timeout: float) -> None:
        assert self.supervisor is not None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir)}
        self.ca = ca = CertificateAuthority(self.pki, "cluster")
        proxy_ca = CertificateAuthority(self.pki, "front-proxy")
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            hosts=(
                self.host,
                "127.0.0.1",
                "10.96.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        admin = ca.issue("admin", "lab-admin", organizations=("system:masters",), client=True)
        kubelet_client = ca.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        )
        proxy_client = proxy_ca.issue("front-proxy-client", "front-proxy-client", client=True)
        sa = write_service_account_keys(self.pki)
        write_kubeconfig(self.kubeconfig, self.url, ca.cert, admin)
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(_AUDIT_POLICY))

        etcd_port, etcd_peer = free_port(), free_port()
        self.supervisor.add(
            "etcd",
            [
                str(tool("etcd")),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--name",
                "lab",
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"lab=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(2 << 30),
                "--log-level",
                "warn",
            ],
            env,
        )
        self.supervisor.add(
            "kube-apiserver",
            [
                str(tool("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={self.host}",
                f"--secure-port={self.port}",
                f"--advertise-address={self.host}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert}",
                f"--service-account-issuer={SERVICE_ISSUER}",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--requestheader-client-ca-file={proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_client.cert}",
                f"--proxy-client-key-file={proxy_client.key}",
                "--enable-aggregator-routing=true",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=0",
                "--profiling=false",
                "--v=1",
                *self.extra_apiserver_args,
            ],
            env,
        )
        self._wait_ready(timeout)
        if not self.controllers:
            return
        for name, user in (
            ("kube-controller-manager", "system:kube-controller-manager"),
            ("kube-scheduler", "system:kube-scheduler"),
        ):
            pair = ca.issue(name, user, client=True)
            write_kubeconfig(self.workdir / f"{name}.kubeconfig", self.url, ca.cert, pair)
        cm = self.workdir / "kube-controller-manager.kubeconfig"
        self.supervisor.add(
            "kube-controller-manager",
            [
                str(tool("kube-controller-manager")),
                f"--kubeconfig={cm}",
                f"--authentication-kubeconfig={cm}",
                f"--authorization-kubeconfig={cm}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.cert}",
                f"--cluster-signing-cert-file={ca.cert}",
                f"--cluster-signing-key-file={ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
            env,
        )
        sched = self.workdir / "kube-scheduler.kubeconfig"
        self.supervisor.add(
            "kube-scheduler",
            [
                str(tool("kube-scheduler")),
                f"--kubeconfig={sched}",
                f"--authentication-kubeconfig={sched}",
                f"--authorization-kubeconfig={sched}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--v=1",
            ],
            env,
        )
        self._wait_for_default_serviceaccount(timeout)

    # -- talking to it --------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        assert self.ca is not None
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str, timeout: float = 10.0) -> object:
        """GET ``path`` as the admin; the decoded JSON."""
        with urllib.request.urlopen(self.url + path, context=self._ssl(), timeout=timeout) as resp:
            return json.loads(resp.read())

    def _wait_ready(self, timeout: float) -> None:
        assert self.supervisor is not None
        deadline = time.monotonic() + timeout
        ctx = self._ssl()
        last = ""
        while time.monotonic() < deadline:
            for name in ("etcd", "kube-apiserver"):
                proc = self.supervisor.processes[name]
                if proc.exit_codes and proc.restarts >= 3:
                    raise RuntimeError(f"{name} keeps exiting; its log ends:\n{proc.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        tail = self.supervisor.processes["kube-apiserver"].log_tail()
        raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f} s ({last}):\n{tail}")

    def _wait_for_default_serviceaccount(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.get("/api/v1/namespaces/default/serviceaccounts/default")
                return
            time.sleep(0.3)
        raise RuntimeError("the controller manager did not create the default ServiceAccount")

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``.tools/bin/kubectl`` as the admin."""
        full_env = {**os.environ, **(env or {}), "KUBECONFIG": str(self.kubeconfig)}
        return subprocess.run(
            [str(tool("kubectl")), f"--cache-dir={self.workdir / 'kubectl-cache'}", *args],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=check,
            env=full_env,
        )

"""A small async Kubernetes API client on aiohttp, for the few calls the operator makes.

kopf does the watching; this client does the writing (create, merge-patch, delete) and
the rare read (a Secret, a ConfigMap). It logs in with the same credentials kopf uses
(:func:`connect` takes kopf's ``ConnectionInfo``) and counts its requests, which the
benchmark reports as requests per job. It identifies itself as :data:`USER_AGENT` (kopf
sends ``kopf/<version>``), so API audit logs and the lab's RBAC recording can tell the two
apart.

Bearer tokens expire: the kubelet rotates a pod's projected ServiceAccount token (by
swapping the file under ``/var/run/secrets/kubernetes.io/serviceaccount/``) long before
it expires, and the API server refuses an expired one with 401. So the token is never
baked in: a :class:`FileToken` re-reads the file whenever it changes, and on a 401 every
token source is asked to refresh (the file is read again; a kubeconfig token asks kopf's
latest login, which kopf renews on its own 401s) and the request is sent once more.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import kopf

from tidetune import __version__

#: The ``User-Agent`` of every request this client sends.
USER_AGENT = f"tidetune-operator/{__version__}"
#: Where the kubelet projects a pod's ServiceAccount token (and kopf reads it).
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

log = logging.getLogger("tidetune.operator")


class TokenSource(Protocol):
    """Where the client's bearer token comes from."""

    def current(self) -> str | None:
        """The token to send now."""

    def refresh(self) -> bool:
        """The API server said 401: get the token afresh; True when it changed."""


class StaticToken:
    """A token given once (a kubeconfig's), renewed on a 401 by ``relogin`` when given
    (the handlers pass kopf's latest login)."""

    def __init__(self, token: str, relogin: Callable[[], str | None] | None = None) -> None:
        self._token = token
        self._relogin = relogin

    def current(self) -> str | None:
        return self._token

    def refresh(self) -> bool:
        fresh = self._relogin() if self._relogin is not None else None
        if fresh and fresh != self._token:
            self._token = fresh
            return True
        return False


class FileToken:
    """A token read from a file and read again whenever the file changes (inode, size or
    modification time) — a projected ServiceAccount token — or on :meth:`refresh`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None
        self.reads = 0

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows the kubelet's ..data symlink
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> bool:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as err:
            log.warning("cannot read the API token %s: %s; keeping the last one", self.path, err)
            return False
        self.reads += 1
        changed = bool(token) and token != self._token
        if token:
            self._token = token
        return changed

    def current(self) -> str | None:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            self._stamp = stamp
            self._read()
        return self._token

    def refresh(self) -> bool:
        self._stamp = self._stat()
        return self._read()


class ApiError(Exception):
    """An API call failed. ``status`` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"HTTP {status} {reason}: {message}" if status else message)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def temporary(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, sub: str | None = None
    ) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


FINETUNEJOBS = Resource("tidetune.io", "v1alpha1", "finetunejobs")
IDLEPOOLS = Resource("tidetune.io", "v1alpha1", "idlepools", namespaced=False)
SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
PODS = Resource("", "v1", "pods")
CLUSTERTRAININGRUNTIMES = Resource(
    "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", namespaced=False
)
#: Kueue's WorkloadPriorityClasses (cluster-scoped; kueue.x-k8s.io/v1beta2: Kueue 0.15 or newer)
WORKLOAD_PRIORITY_CLASSES = Resource(
    "kueue.x-k8s.io", "v1beta2", "workloadpriorityclasses", namespaced=False
)


class Kube:
    """The client. One aiohttp session; safe to share across tasks."""

    def __init__(
        self,
        server: str,
        session: aiohttp.ClientSession,
        timeout: float,
        token: TokenSource | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.token = token
        self.requests: Counter[str] = Counter()

    async def close(self) -> None:
        await self.session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        text = await self._send(method, path, body, content_type, "application/json")
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    async def _send(self, method: str, path: str, body: Any, content_type: str, accept: str) -> str:
        """One request (again once with a renewed token on a 401); the answer's text.

        Raises:
            ApiError: the server answered with an error, or could not be reached.
        """
        self.requests[method] += 1
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": accept}
        try:
            for again in (True, False):
                token = self.token.current() if self.token is not None else None
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                async with self.session.request(
                    method, self.server + path, data=data, headers=headers, timeout=self.timeout
                ) as resp:
                    text = await resp.text()
                    status = resp.status
                if status == 401 and again and self.token is not None and self.token.refresh():
                    log.info("API token refused (401); retrying with the renewed token")
                    continue
                break
            if status >= 400:
                try:
                    info = json.loads(text)
                    message, reason = (
                        str(info.get("message", text)),
                        str(info.get("reason", "")),
                    )
                except ValueError:
                    message, reason = text[:500], ""
                raise ApiError(status, message, reason)
            return text
        except (TimeoutError, aiohttp.ClientError) as err:
            raise ApiError(0, f"{method} {path}: {type(err).__name__}: {err}") from err

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """The items of ``res`` (in ``namespace``), filtered by ``label_selector``."""
        path = res.path(namespace)
        if label_selector:
            path += "?" + urllib.parse.urlencode({"labelSelector": label_selector})
        items: list[dict[str, Any]] = (await self._call("GET", path)).get("items") or []
        return items

    async def pod_log(
        self, name: str, namespace: str, container: str, tail_lines: int, limit_bytes: int
    ) -> str:
        """The last ``tail_lines`` lines (at most ``limit_bytes``) of a container's log
        (``pods/log``), as text."""
        query = urllib.parse.urlencode(
            {"container": container, "tailLines": str(tail_lines), "limitBytes": str(limit_bytes)}
        )
        path = f"{PODS.path(namespace, name, 'log')}?{query}"
        return await self._send("GET", path, None, "application/json", "*/*")

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self._call("GET", res.path(namespace, name))

    async def create(self, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
        namespace = body.get("metadata", {}).get("namespace")
        return await self._call("POST", res.path(namespace), body)

    async def create_or_get(
        self, res: Resource, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Create, or return the existing object of that name: ``(object, created)``."""
        try:
            return await self.create(res, body), True
        except ApiError as err:
            if not err.conflict:
                raise
        meta = body["metadata"]
        return await self.get(res, meta["name"], meta.get("namespace")), False

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        sub: str | None = None,
    ) -> dict[str, Any]:
        return await self._call(
            "PATCH", res.path(namespace, name, sub), patch, "application/merge-patch+json"
        )

    async def apply(self, res: Resource, body: dict[str, Any], manager: str) -> dict[str, Any]:
        """Server-side apply ``body`` as field manager ``manager`` (conflicts forced: the
        object is ``manager``'s to keep)."""
        meta = body["metadata"]
        query = urllib.parse.urlencode({"fieldManager": manager, "force": "true"})
        path = f"{res.path(meta.get('namespace'), meta['name'])}?{query}"
        return await self._call("PATCH", path, body, "application/apply-patch+yaml")

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str = "Background",
    ) -> dict[str, Any] | None:
        """Delete; the object as the server still holds it (``Foreground``: with its
        ``deletionTimestamp``, until its dependents are gone), or ``None`` once gone."""
        try:
            body = await self._call(
                "DELETE", res.path(namespace, name), {"propagationPolicy": propagation}
            )
        except ApiError as err:
            if not err.not_found:
                raise
            return None
        if isinstance(body, dict) and body.get("kind") not in (None, "Status"):
            return body
        return None


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=str(info.ca_path))
    elif info.ca_data:
        data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        with contextlib.suppress(ValueError):
            data = base64.b64decode(data, validate=True).decode()
        context.load_verify_locations(cadata=data)
    cert = info.certificate_path
    key = info.private_key_path
    if info.certificate_data and info.private_key_data:
        cert = _temp_pem(info.certificate_data)
        key = _temp_pem(info.private_key_data)
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    return context


def _temp_pem(data: str | bytes) -> str:
    raw = data if isinstance(data, bytes) else data.encode()
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(raw, validate=True)
    with tempfile.NamedTemporaryFile(delete=False, suffix=".pem") as fh:
        fh.write(raw)
        return fh.name


def token_source(
    info: kopf.ConnectionInfo,
    relogin: Callable[[], str | None] | None = None,
    token_file: str | os.PathLike[str] = SERVICE_ACCOUNT_TOKEN,
) -> TokenSource | None:
    """The token kopf logged in with, as a source that follows its rotation: the
    ServiceAccount token file when that is where it came from, else the token itself
    (renewed by ``relogin`` on a 401)."""
    if not info.token:
        return None
    source = FileToken(token_file)
    if source.current() == info.token:
        return source
    return StaticToken(info.token, relogin)


def connect(
    info: kopf.ConnectionInfo,
    timeout: float,
    relogin: Callable[[], str | None] | None = None,
    token_file: str | os.PathLike[str] = SERVICE_ACCOUNT_TOKEN,
) -> Kube:
    """A client for the cluster kopf logged in to."""
    headers: dict[str, str] = {"User-Agent": USER_AGENT}
    auth = None
    token = token_source(info, relogin, token_file)
    if token is None and info.username and info.password:
        auth = aiohttp.BasicAuth(info.username, info.password)
    connector = aiohttp.TCPConnector(ssl=_ssl_context(info), limit=64)
    session = aiohttp.ClientSession(connector=connector, headers=headers, auth=auth)
    return Kube(info.server, session, timeout, token)

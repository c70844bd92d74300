"""A small async Kubernetes API client on aiohttp, for the few calls the operator makes.

kopf does the watching; this client does the writing (create, merge-patch, delete) and
the rare read (a Secret, a ConfigMap). It logs in with the same credentials kopf uses
(:func:`connect` takes kopf's ``ConnectionInfo``) and counts its requests, which the
benchmark reports as requests per job. It identifies itself as :data:`USER_AGENT` (kopf
sends ``kopf/<version>``), so API audit logs and the lab's RBAC recording can tell the two
apart.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from tidetune import __version__

#: The ``User-Agent`` of every request this client sends.
USER_AGENT = f"tidetune-operator/{__version__}"


class ApiError(Exception):
    """An API call failed. ``status`` is the HTTP code (0: no answer)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        self.status = status
        self.reason = reason
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


class Kube:
    """The client. One aiohttp session; safe to share across tasks."""

    def __init__(self, server: str, session: aiohttp.ClientSession, timeout: float) -> None:
        self.server = server.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.requests: Counter[str] = Counter()

    async def close(self) -> None:
        await self.session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        self.requests[method] += 1
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            async with self.session.request(
                method, self.server + path, data=data, headers=headers, timeout=self.timeout
            ) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    try:
                        info = json.loads(text)
                        message, reason = (
                            str(info.get("message", text)),
                            str(info.get("reason", "")),
                        )
                    except ValueError:
                        message, reason = text[:500], ""
                    raise ApiError(resp.status, message, reason)
                return json.loads(text) if text else {}
        except (TimeoutError, aiohttp.ClientError) as err:
            raise ApiError(0, f"{method} {path}: {type(err).__name__}: {err}") from err

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

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        try:
            await self._call(
                "DELETE", res.path(namespace, name), {"propagationPolicy": "Background"}
            )
        except ApiError as err:
            if not err.not_found:
                raise


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


def connect(info: kopf.ConnectionInfo, timeout: float) -> Kube:
    """A client for the cluster kopf logged in to."""
    headers: dict[str, str] = {"User-Agent": USER_AGENT}
    auth = None
    if info.token:
        headers["Authorization"] = f"Bearer {info.token}"
    elif info.username and info.password:
        auth = aiohttp.BasicAuth(info.username, info.password)
    connector = aiohttp.TCPConnector(ssl=_ssl_context(info), limit=64)
    session = aiohttp.ClientSession(connector=connector, headers=headers, auth=auth)
    return Kube(info.server, session, timeout)

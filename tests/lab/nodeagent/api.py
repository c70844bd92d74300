"""A small Kubernetes REST client for the node agent: kubeconfig, JSON requests, watches.

Only what the agent needs, on plain dicts (the API's own camelCase), thread-safe (one
``urllib3.PoolManager``). Certificates given inline in the kubeconfig are written to a
private temporary directory because ``ssl`` only loads them from files.
"""

from __future__ import annotations

import base64
import json
import logging
import pathlib
import ssl
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
import yaml

__all__ = ["ApiError", "Informer", "KubeApi", "WatchExpired"]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.reason = ""
            self.message = body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


def _materialise(entry: Mapping[str, Any], key: str, tmp: pathlib.Path, name: str) -> str | None:
    if entry.get(f"{key}-data"):
        path = tmp / name
        path.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        path.chmod(0o600)
        return str(path)
    value = entry.get(key)
    return str(value) if value else None


class KubeApi:
    """Requests to one API server with the credentials of a kubeconfig's current context."""

    def __init__(self, kubeconfig: str | pathlib.Path) -> None:
        try:
            config = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
            contexts = {c["name"]: c["context"] for c in config["contexts"]}
            context = contexts[config["current-context"]]
            cluster = {c["name"]: c["cluster"] for c in config["clusters"]}[context["cluster"]]
            user = {u["name"]: u["user"] for u in config["users"]}[context["user"]]
        except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
            raise ValueError(
                f"kubeconfig {kubeconfig}: cannot read server and user of the current context "
                f"({exc!r}); expected clusters/users/contexts and current-context"
            ) from exc
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="nodeagent-kubeconfig-"))
        self.server = str(cluster["server"]).rstrip("/")
        ca = _materialise(cluster, "certificate-authority", self._tmp, "ca.crt")
        cert = _materialise(user, "client-certificate", self._tmp, "client.crt")
        key = _materialise(user, "client-key", self._tmp, "client.key")
        self._headers = {"Accept": "application/json"}
        if user.get("token"):
            self._headers["Authorization"] = f"Bearer {user['token']}"
        context_ssl = ssl.create_default_context(cafile=ca)
        if cluster.get("insecure-skip-tls-verify"):
            context_ssl.check_hostname = False
            context_ssl.verify_mode = ssl.CERT_NONE
        if cert and key:
            context_ssl.load_cert_chain(cert, key)
        self._pool = urllib3.PoolManager(ssl_context=context_ssl, maxsize=32, retries=False)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        """One request; the decoded JSON answer, or :class:`ApiError`."""
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        response = self._pool.request(
            method, url, body=data, headers=headers, timeout=timeout, preload_content=True
        )
        text = response.data.decode("utf-8", "replace")
        if response.status >= 300:
            raise ApiError(response.status, text, f"{method} {path}")
        return json.loads(text) if text else {}

    def get(self, path: str, **params: Any) -> JSON:
        return self.request("GET", path, params=params)

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self.request("DELETE", path, body)

    def merge_patch(self, path: str, body: JSON) -> JSON:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def strategic_patch(self, path: str, body: JSON) -> JSON:
        return self.request(
            "PATCH", path, body, content_type="application/strategic-merge-patch+json"
        )

    def watch(
        self, path: str, resource_version: str, *, timeout_seconds: int = 240, **params: Any
    ) -> Iterator[JSON]:
        """The events of one watch request (ends when the server closes it)."""
        query = {
            **params,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        url = f"{self.server}{path}?{urllib.parse.urlencode(query)}"
        response = self._pool.request(
            "GET",
            url,
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
        )
        try:
            if response.status == 410:
                raise WatchExpired(path)
            if response.status >= 300:
                raise ApiError(response.status, response.data.decode(), f"WATCH {path}")
            buffer = b""
            for chunk in response.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        if status.get("code") == 410:
                            raise WatchExpired(path)
                        raise ApiError(int(status.get("code", 500)), json.dumps(status), path)
                    yield event
        finally:
            response.release_conn()


class Informer:
    """List-then-watch of one collection, relisting on expiry or error; calls
    ``handler(type, object)`` with ADDED/MODIFIED/DELETED from its own thread."""

    def __init__(
        self,
        api: KubeApi,
        path: str,
        handler: Callable[[str, JSON], None],
        *,
        stop: threading.Event,
        **params: Any,
    ) -> None:
        self.api = api
        self.path = path
        self.handler = handler
        self.params = params
        self.store: dict[str, JSON] = {}
        self.synced = threading.Event()
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=f"informer{path}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    @staticmethod
    def key(obj: JSON) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def _dispatch(self, kind: str, obj: JSON) -> None:
        try:
            self.handler(kind, obj)
        except Exception:
            logger.exception("informer %s: handler failed on %s %s", self.path, kind, self.key(obj))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.api.get(self.path, **self.params)
                version = str(listed["metadata"]["resourceVersion"])
                seen = set()
                for item in listed.get("items") or []:
                    key = self.key(item)
                    seen.add(key)
                    kind = "MODIFIED" if key in self.store else "ADDED"
                    self.store[key] = item
                    self._dispatch(kind, item)
                for key in [k for k in self.store if k not in seen]:
                    self._dispatch("DELETED", self.store.pop(key))
                self.synced.set()
                while not self._stop.is_set():
                    for event in self.api.watch(self.path, version, **self.params):
                        obj = event.get("object") or {}
                        version = str((obj.get("metadata") or {}).get("resourceVersion", version))
                        if event["type"] == "BOOKMARK":
                            continue
                        key = self.key(obj)
                        if event["type"] == "DELETED":
                            self.store.pop(key, None)
                        else:
                            self.store[key] = obj
                        self._dispatch(event["type"], obj)
                        if self._stop.is_set():
                            return
            except WatchExpired:
                continue
            except Exception as exc:
                logger.warning("informer %s: %r; listing again in 1 s", self.path, exc)
                self._stop.wait(1.0)

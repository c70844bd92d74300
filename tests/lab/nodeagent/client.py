"""A client for the node agent's test hooks (``ready {"hooks": URL}`` gives the URL)."""

from __future__ import annotations

import json
import signal as signals
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["HookError", "NodeAgentClient"]


class HookError(Exception):
    """The agent refused a hook call (unknown node, pod or container; bad input)."""


class NodeAgentClient:
    def __init__(self, url: str, timeout: float = 330.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(
                {k: str(v).lower() if isinstance(v, bool) else v for k, v in query.items()}
            )
        data = json.dumps(body).encode() if body is not None else b"{}"
        request = urllib.request.Request(
            url,
            data=data if method == "POST" else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", str(exc))
            except ValueError:
                message = str(exc)
            raise HookError(f"{method} {path}: {message}") from exc

    def nodes(self) -> list[str]:
        return list(self._call("GET", "/nodes")["nodes"])

    def reclaim_node(self, name: str, *, wait: bool = True, timeout: float = 300) -> dict[str, Any]:
        """Cordon, evict every pod (grace periods and PDBs honoured), delete the Node.

        With ``wait`` the call returns once the pods are gone and the Node is deleted.
        """
        return dict(self._call("POST", f"/nodes/{name}/reclaim", wait=wait, timeout=timeout))

    def lose_node(self, name: str) -> dict[str, Any]:
        """SIGKILL every process of the node's pods now and delete the Node."""
        return dict(self._call("POST", f"/nodes/{name}/lose"))

    def add_node(self, spec: Mapping[str, Any]) -> None:
        """Register one more node (same shape as an entry of agent.json's ``nodes``)."""
        self._call("POST", "/nodes", dict(spec))

    def kill_container(
        self,
        namespace: str,
        pod: str,
        container: str,
        signal: int | str = signals.SIGKILL,
    ) -> None:
        """Send ``signal`` to the container's main process (it restarts per restartPolicy)."""
        value = signal.name if isinstance(signal, signals.Signals) else signal
        self._call(
            "POST", f"/pods/{namespace}/{pod}/containers/{container}/signal", {"signal": value}
        )

"""The real kube-apiserver as the judge of our CRDs: verdicts by server-side dry run.

``ApiServer`` starts etcd and kube-apiserver (``tests.lab.controlplane``, no controllers) and
installs the generated CRDs from ``crds/`` with ``kubectl apply`` — a CRD the server refuses
fails there. ``verdict(manifest)`` asks the server whether it would store ``manifest``
(``dryRun=All``, ``fieldValidation=Strict`` like kubectl): pruning, defaults, the structural
schema, patterns and the CEL rules are the server's own. ``verdict(new, old=old)`` stores
``old`` (with its status, through the status subresource, as the operator writes it) and then
asks about the update to ``new``, so that transition rules see a real ``oldSelf``.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from tests.lab.controlplane import ControlPlane

__all__ = ["ApiServer"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_PLURALS = {"FineTuneJob": "finetunejobs", "IdlePool": "idlepools"}
_NAMESPACED = {"FineTuneJob": True, "IdlePool": False}


class ApiServer:
    """A started etcd + kube-apiserver with the CRDs installed (see the module doc)."""

    def __init__(self, workdir: pathlib.Path) -> None:
        self.control_plane = ControlPlane(workdir, controllers=False)
        self._names = itertools.count()
        self._ctx: ssl.SSLContext | None = None

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.control_plane.kubeconfig

    def start(self) -> ApiServer:
        self.control_plane.start()
        self._ctx = self.control_plane._ssl()
        self.kubectl("apply", "-f", str(REPO_ROOT / "crds"))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/finetunejobs.tidetune.io",
            "crd/idlepools.tidetune.io",
        )
        self._wait_served()
        return self

    def stop(self) -> None:
        self.control_plane.stop()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        result = self.control_plane.kubectl(*args, input=input, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _wait_served(self) -> None:
        """Until discovery lists both kinds (what kubectl resolves `ftj` with)."""
        for _ in range(150):
            names = self.kubectl(
                "api-resources", "--api-group=tidetune.io", "-o", "name", check=False
            ).stdout.split()
            if {"finetunejobs.tidetune.io", "idlepools.tidetune.io"} <= set(names):
                return
            time.sleep(0.2)
        raise RuntimeError("the tidetune.io API is not served after the CRDs were established")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.control_plane.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    # -- verdicts ---------------------------------------------------------------------------

    def _collection(self, kind: str) -> str:
        plural = _PLURALS[kind]
        if _NAMESPACED[kind]:
            return f"/apis/tidetune.io/v1alpha1/namespaces/default/{plural}"
        return f"/apis/tidetune.io/v1alpha1/{plural}"

    def verdict(self, manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
        """The server's problems with ``manifest`` (empty: it would store it)."""
        kind = manifest["kind"]
        base = self._collection(kind)
        doc = json.loads(json.dumps(manifest))
        doc.setdefault("metadata", {})
        if old is None:
            doc["metadata"].pop("namespace", None)
            status, answer = self.request("POST", f"{base}?dryRun=All&fieldValidation=Strict", doc)
            return _problems(status, answer)
        name = f"verdict-{next(self._names)}"
        stored = json.loads(json.dumps(old))
        stored["metadata"] = {"name": name}
        status_part = stored.pop("status", None)
        status, answer = self.request("POST", base, stored)
        if status != 201:
            raise AssertionError(f"the old object was refused: {_problems(status, answer)}")
        if status_part is not None:
            answer["status"] = status_part
            status, answer = self.request("PUT", f"{base}/{name}/status", answer)
            if status != 200:
                raise AssertionError(f"the old status was refused: {_problems(status, answer)}")
        doc["metadata"] = {"name": name, "resourceVersion": answer["metadata"]["resourceVersion"]}
        doc.pop("status", None)
        status, answer = self.request(
            "PUT", f"{base}/{name}?dryRun=All&fieldValidation=Strict", doc
        )
        return _problems(status, answer)


def _problems(status: int, answer: dict[str, Any]) -> list[str]:
    if status in (200, 201):
        return []
    causes = (answer.get("details") or {}).get("causes") or []
    if causes:
        return [f"{c.get('field', '')}: {c.get('message', '')}" for c in causes]
    return [str(answer.get("message") or f"HTTP {status}")]

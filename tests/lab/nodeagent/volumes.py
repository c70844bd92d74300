"""Pod volumes as the kubelet lays them out, in the agent's work directory.

``configMap``, ``secret``, ``downwardAPI`` and ``projected`` volumes are written with the
kubelet's atomic-writer layout (a timestamped directory, the ``..data`` symlink swapped by
``rename``, one top-level symlink per path), so that updates (a rotated token, an edited
ConfigMap) appear atomically inside running containers. ``emptyDir`` is a 0777 directory,
a tmpfs for ``medium: Memory`` (``sizeLimit`` as its size). ``hostPath`` is the host path.
Ownership follows the kubelet: with ``fsGroup`` every file and directory is group-owned by
it and gains group read (and rw for emptyDir) with setgid directories; projected
ServiceAccount tokens are owned by the containers' common ``runAsUser`` when they share one.
Service account tokens come from the TokenRequest API bound to the pod, refreshed when 80 %
of their lifetime has passed (:meth:`PodVolumes.refresh`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from tests.lab.nodeagent.spec import (
    ConfigError,
    field_ref_value,
    parse_quantity,
    resource_field_value,
)

__all__ = ["PodVolumes", "VolumeError", "atomic_write"]

JSON = dict[str, Any]
#: (kind "Secret"/"ConfigMap", namespace, name) → the object, or None when it does not exist.
Getter = Callable[[str, str, str], "JSON | None"]
#: (namespace, service account, body) → the TokenRequest answer.
TokenRequester = Callable[[str, str, JSON], JSON]


class VolumeError(Exception):
    """A volume cannot be set up yet (kubelet: FailedMount; the pod stays ContainerCreating)."""


def atomic_write(
    target: pathlib.Path,
    files: Mapping[str, tuple[bytes, int]],
    *,
    gid: int | None = None,
    owner: Mapping[str, int] | None = None,
) -> None:
    """Publish ``files`` (relative path → (content, mode)) under ``target`` atomically."""
    target.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    data_dir = target / f"{stamp}.{os.getpid()}.{time.monotonic_ns() % 10**6}"
    data_dir.mkdir(mode=0o755)
    for rel, (content, mode) in files.items():
        path = data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        file_mode = mode | (0o440 if gid is not None else 0)
        os.chown(path, (owner or {}).get(rel, 0), gid if gid is not None else 0)
        path.chmod(file_mode)
    for directory in [data_dir, *(p for p in data_dir.rglob("*") if p.is_dir())]:
        if gid is not None:
            os.chown(directory, 0, gid)
            directory.chmod(0o2755 | 0o550)
    old = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    tmp_link = target / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(data_dir.name)
    os.rename(tmp_link, target / "..data")
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in target.iterdir():
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink()
    if old and old != data_dir.name:
        shutil.rmtree(target / old, ignore_errors=True)


def _decode(obj: JSON, kind: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if kind == "Secret":
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value)
    else:
        for key, value in (obj.get("data") or {}).items():
            out[key] = str(value).encode()
        for key, value in (obj.get("binaryData") or {}).items():
            out[key] = base64.b64decode(value)
    return out


class PodVolumes:
    """The volumes of one pod under ``root`` (``root/<volume name>``)."""

    def __init__(
        self,
        pod: JSON,
        root: pathlib.Path,
        *,
        get: Getter,
        request_token: TokenRequester,
        host_ip: str,
        node_allocatable: Mapping[str, Any],
        run_as_user: int | None,
    ) -> None:
        self.pod = pod
        self.root = root
        self._get = get
        self._request_token = request_token
        self._host_ip = host_ip
        self._allocatable = node_allocatable
        self._run_as_user = run_as_user
        self._tmpfs: list[pathlib.Path] = []
        self._paths: dict[str, pathlib.Path] = {}
        #: volume name → monotonic time after which its tokens must be renewed
        self._token_refresh: dict[str, float] = {}
        self.pod_ip = ""
        sc = (pod.get("spec") or {}).get("securityContext") or {}
        self.fs_group: int | None = int(sc["fsGroup"]) if sc.get("fsGroup") is not None else None

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"].get("namespace", "default"))

    def path(self, name: str) -> pathlib.Path:
        """The host directory (or hostPath) that a volumeMount of ``name`` binds."""
        if name not in self._paths:
            raise ConfigError(f'unable to find volume "{name}" of the pod')
        return self._paths[name]

    def setup(self) -> None:
        """Materialise every volume; :class:`VolumeError` when one cannot be yet."""
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            self._setup_one(volume, first=volume["name"] not in self._paths)

    def tokens_due(self) -> bool:
        """Whether a projected token has reached 80 % of its lifetime."""
        return any(time.monotonic() >= due for due in self._token_refresh.values())

    def refresh(self, force_tokens: bool = False) -> None:
        """Rewrite the content volumes (ConfigMap/Secret edits, token rotation at 80 %)."""
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            if any(k in volume for k in ("configMap", "secret", "downwardAPI", "projected")):
                # on failure keep the last good content, as the kubelet does
                with contextlib.suppress(VolumeError):
                    self._setup_one(volume, first=False, force_tokens=force_tokens)

    def _setup_one(self, volume: JSON, *, first: bool, force_tokens: bool = False) -> None:
        name = volume["name"]
        target = self.root / name
        if "emptyDir" in volume:
            if first:
                self._empty_dir(target, volume["emptyDir"] or {})
        elif "hostPath" in volume:
            path = pathlib.Path(volume["hostPath"].get("path", "/"))
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            elif kind and not path.exists():
                raise VolumeError(f"hostPath type check failed: {path} is not a {kind}")
            self._paths[name] = path
            return
        elif "configMap" in volume or "secret" in volume:
            kind = "ConfigMap" if "configMap" in volume else "Secret"
            source = volume.get("configMap") or volume.get("secret") or {}
            obj_name = source.get("name") if kind == "ConfigMap" else source.get("secretName")
            files = self._object_files(kind, str(obj_name or ""), source, source.get("defaultMode"))
            atomic_write(target, files, gid=self.fs_group)
        elif "downwardAPI" in volume:
            source = volume["downwardAPI"] or {}
            files = self._downward_files(source.get("items") or [], source.get("defaultMode"))
            atomic_write(target, files, gid=self.fs_group)
        elif "projected" in volume:
            files, owner = self._projected_files(name, volume["projected"] or {}, force_tokens)
            atomic_write(target, files, gid=self.fs_group, owner=owner)
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise VolumeError(
                f"volume {name!r}: type {kinds} is not supported by the lab's node agent "
                "(configMap, secret, emptyDir, downwardAPI, projected, hostPath are)"
            )
        self._paths[name] = target

    def _empty_dir(self, target: pathlib.Path, source: JSON) -> None:
        target.mkdir(parents=True, exist_ok=True)
        if source.get("medium") == "Memory":
            options = "mode=0777"
            if source.get("sizeLimit"):
                options += f",size={int(parse_quantity(source['sizeLimit']))}"
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise VolumeError(f"emptyDir {target.name}: tmpfs mount: {result.stderr.strip()}")
            self._tmpfs.append(target)
        if self.fs_group is not None:
            os.chown(target, 0, self.fs_group)
            target.chmod(0o2777)
        else:
            target.chmod(0o777)

    def _object_files(
        self, kind: str, obj_name: str, source: JSON, default_mode: int | None
    ) -> dict[str, tuple[bytes, int]]:
        obj = self._get(kind, self.namespace, obj_name)
        optional = bool(source.get("optional"))
        if obj is None:
            if optional:
                return {}
            raise VolumeError(f'{kind.lower()} "{obj_name}" not found')
        data = _decode(obj, kind)
        mode = int(default_mode) if default_mode is not None else 0o644
        items = source.get("items")
        if not items:
            return {key: (value, mode) for key, value in data.items()}
        files: dict[str, tuple[bytes, int]] = {}
        for item in items:
            key = item.get("key", "")
            if key not in data:
                if optional:
                    continue
                raise VolumeError(f"configuration key {key!r} not found in {kind} {obj_name}")
            files[item.get("path") or key] = (
                data[key],
                int(item["mode"]) if item.get("mode") is not None else mode,
            )
        return files

    def _downward_files(
        self, items: list[JSON], default_mode: int | None
    ) -> dict[str, tuple[bytes, int]]:
        mode = int(default_mode) if default_mode is not None else 0o644
        files: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if item.get("fieldRef"):
                value = field_ref_value(
                    self.pod, item["fieldRef"].get("fieldPath", ""), self.pod_ip, self._host_ip
                )
            elif item.get("resourceFieldRef"):
                ref = item["resourceFieldRef"]
                containers = {
                    c["name"]: c for c in (self.pod.get("spec") or {}).get("containers") or []
                }
                container = containers.get(ref.get("containerName", ""), {})
                value = resource_field_value(
                    container, ref.get("resource", ""), ref.get("divisor"), self._allocatable
                )
            else:
                continue
            item_mode = int(item["mode"]) if item.get("mode") is not None else mode
            files[item.get("path", "")] = (value.encode(), item_mode)
        return files

    def _projected_files(
        self, name: str, source: JSON, force_tokens: bool
    ) -> tuple[dict[str, tuple[bytes, int]], dict[str, int]]:
        default_mode = source.get("defaultMode")
        files: dict[str, tuple[bytes, int]] = {}
        owner: dict[str, int] = {}
        renew = force_tokens or time.monotonic() >= self._token_refresh.get(name, 0.0)
        existing = self.root / name
        next_refresh = float("inf")
        for part in source.get("sources") or []:
            if "configMap" in part or "secret" in part:
                kind = "ConfigMap" if "configMap" in part else "Secret"
                ref = part.get("configMap") or part.get("secret") or {}
                files.update(self._object_files(kind, ref.get("name", ""), ref, default_mode))
            elif "downwardAPI" in part:
                items = (part["downwardAPI"] or {}).get("items") or []
                files.update(self._downward_files(items, default_mode))
            elif "serviceAccountToken" in part:
                token_source = part["serviceAccountToken"]
                path = token_source.get("path", "token")
                mode = int(default_mode) if default_mode is not None else 0o644
                if not renew and (existing / path).exists():
                    files[path] = ((existing / path).read_bytes(), mode)
                else:
                    token, refresh_in = self._token(token_source)
                    files[path] = (token.encode(), mode)
                    next_refresh = min(next_refresh, time.monotonic() + refresh_in)
                if self._run_as_user is not None and self.fs_group is None:
                    owner[path] = self._run_as_user
            else:
                raise VolumeError(f"projected volume {name!r}: source {sorted(part)} not supported")
        if renew and next_refresh != float("inf"):
            self._token_refresh[name] = next_refresh
        return files, owner

    def _token(self, source: JSON) -> tuple[str, float]:
        """A bound token and the seconds after which it must be renewed (80 % of its TTL)."""
        meta = self.pod["metadata"]
        spec: JSON = {
            "expirationSeconds": int(source.get("expirationSeconds") or 3600),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        account = (self.pod.get("spec") or {}).get("serviceAccountName") or "default"
        try:
            answer = self._request_token(
                self.namespace,
                account,
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            )
        except Exception as exc:
            raise VolumeError(
                f"failed to fetch token for service account {account}: {exc}"
            ) from exc
        ttl = float(
            (answer.get("spec") or {}).get("expirationSeconds") or spec["expirationSeconds"]
        )
        expires = datetime.datetime.fromisoformat(
            answer["status"]["expirationTimestamp"].replace("Z", "+00:00")
        )
        remaining = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
        return str(answer["status"]["token"]), max(1.0, min(remaining - 0.2 * ttl, 0.8 * ttl))

    def close(self) -> None:
        """Unmount tmpfs volumes and remove the files."""
        for target in self._tmpfs:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
        self._tmpfs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

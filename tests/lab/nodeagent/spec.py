"""Pure resolution of a pod's containers as the kubelet and a CRI runtime would do it.

No I/O here (the lookups of Secrets and ConfigMaps are passed in): images → local
environments, ``$(VAR)`` expansion, the container environment (``env``, ``envFrom``,
``valueFrom``), the argv from ``command``/``args`` and the image's entrypoint/cmd, the
user and groups with the kubelet's ``runAsNonRoot`` checks, quantities, and the pod's
``/etc/resolv.conf``, ``/etc/hosts`` and hostname.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

__all__ = [
    "ConfigError",
    "Identity",
    "ImageConfig",
    "ImageNotFound",
    "container_argv",
    "container_env",
    "expand",
    "hosts_file",
    "identity",
    "parse_quantity",
    "pod_hostname",
    "resolv_conf",
    "resolve_image",
    "resource_field_value",
]

JSON = dict[str, Any]
#: Looks up a Secret's or ConfigMap's data (decoded to text) by (namespace, name); None if absent.
Lookup = Callable[[str, str], "Mapping[str, str] | None"]

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"


class ConfigError(Exception):
    """The container cannot be configured (kubelet: ``CreateContainerConfigError``)."""


class ImageNotFound(Exception):
    """No configured image matches (kubelet: ``ErrImagePull`` / ``ImagePullBackOff``)."""


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """What an image means here: a local environment (the host filesystem is the rootfs)."""

    prefix: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> ImageConfig:
        allowed = {"prefix", "entrypoint", "cmd", "workingDir", "user", "env"}
        unknown = set(raw) - allowed
        if unknown or not isinstance(raw.get("prefix"), str) or not raw["prefix"]:
            raise ValueError(
                f"{where}: needs a non-empty string 'prefix'; allowed keys are "
                f"{sorted(allowed)}, unknown: {sorted(unknown)}"
            )
        for key in ("entrypoint", "cmd"):
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}.{key}: must be a list of strings")
        env = raw.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError(f"{where}.env: must map names to strings")
        return cls(
            prefix=raw["prefix"],
            entrypoint=tuple(raw.get("entrypoint", [])),
            cmd=tuple(raw.get("cmd", [])),
            working_dir=str(raw.get("workingDir", "")),
            user=str(raw.get("user", "")),
            env=dict(env),
        )


def normalise_image(ref: str) -> str:
    """``docker.io/library/alpine:3`` → ``alpine:3``; other registries' hosts are dropped too."""
    parts = ref.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts)


def resolve_image(images: Sequence[ImageConfig], ref: str) -> ImageConfig:
    """The image whose prefix the (normalised) reference starts with; the longest prefix wins."""
    name = normalise_image(ref)
    matches = [i for i in images if name.startswith(normalise_image(i.prefix))]
    if not matches:
        raise ImageNotFound(
            f'Failed to pull image "{ref}": the lab maps only images starting with '
            f"{sorted(i.prefix for i in images)}"
        )
    return max(matches, key=lambda i: len(i.prefix))


# --- $(VAR) expansion (the kubelet's third_party/forked/golang/expansion rules) ----------


def expand(text: str, *mappings: Mapping[str, str]) -> str:
    """Replace ``$(NAME)`` by its value from the first mapping that has it.

    ``$$`` is an escaped ``$``; an undefined or unterminated reference stays as written;
    a ``$`` before any other character stays as is.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : end]
            for mapping in mappings:
                if name in mapping:
                    out.append(mapping[name])
                    break
            else:
                out.append(f"$({name})")
            i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


# --- quantities -------------------------------------------------------------------------

_SUFFIXES = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+)?(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_quantity(value: Any) -> Fraction:
    """A Kubernetes quantity (``500m``, ``1Gi``, ``2``, ``1e3``) as an exact fraction."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match or match.group(1) in {".", "+", "-"}:
        raise ValueError(f"quantity {value!r}: not a Kubernetes quantity (e.g. 500m, 1Gi, 2)")
    number = Fraction(match.group(1))
    if match.group(2):
        number *= Fraction(10) ** int(match.group(2)[1:])
    return number * _SUFFIXES[match.group(3) or ""]


def resource_field_value(
    container: Mapping[str, Any],
    resource: str,
    divisor: Any,
    node_allocatable: Mapping[str, Any],
) -> str:
    """``resourceFieldRef``: the value the kubelet gives, rounded up in units of the divisor.

    A limit that is not set is the node's allocatable, as with the kubelet.
    """
    resources = container.get("resources") or {}
    kind, _, name = resource.partition(".")
    if kind not in {"limits", "requests"} or not name:
        raise ConfigError(f"resourceFieldRef.resource {resource!r}: not limits.X or requests.X")
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "limits":
        raw = node_allocatable.get(name)
    quantity = parse_quantity(raw if raw is not None else 0)
    unit = parse_quantity(divisor if divisor not in (None, "") else "1")
    if unit <= 0:
        raise ConfigError(f"resourceFieldRef.divisor {divisor!r}: must be positive")
    return str(math.ceil(quantity / unit))


# --- environment ------------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def service_env(api_host: str, api_port: int) -> dict[str, str]:
    """The ``kubernetes`` Service's variables every container gets."""
    url = f"tcp://{api_host}:{api_port}"
    prefix = f"KUBERNETES_PORT_{api_port}_TCP"
    return {
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
        "KUBERNETES_PORT": url,
        prefix: url,
        f"{prefix}_PROTO": "tcp",
        f"{prefix}_PORT": str(api_port),
        f"{prefix}_ADDR": api_host,
    }


def field_ref_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a ``fieldRef.fieldPath`` (env or downward API)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)(?:\['([^']*)'\])?", path)
    if match:
        values = meta.get(match.group(1)) or {}
        if match.group(2) is None:
            return "\n".join(f'{k}="{values[k]}"' for k in sorted(values))
        return str(values.get(match.group(2), ""))
    raise ConfigError(f"fieldRef.fieldPath {path!r}: not supported")


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (data or {}).items()}


def _key_ref(kind: str, ref: Mapping[str, Any], namespace: str, lookup: Lookup) -> str | None:
    name = ref.get("name", "")
    data = lookup(namespace, name)
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{name}" not found')
    key = ref.get("key", "")
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")
    return data[key]


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    secrets: Lookup,
    configmaps: Lookup,
    api_host: str,
    api_port: int,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, Any],
) -> dict[str, str]:
    """The variables the kubelet hands the runtime (the image's env is merged below them).

    Order as in the kubelet: the ``kubernetes`` service variables, then ``envFrom`` sources,
    then ``env`` entries, each ``value`` expanded against what is defined before it.
    Raises :class:`ConfigError` for a missing Secret/ConfigMap/key that is not optional.
    """
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    env: dict[str, str] = {}
    env.update(service_env(api_host, api_port))  # always, whatever enableServiceLinks says
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source or "secretRef" in source:
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            data = (configmaps if kind == "ConfigMap" else secrets)(namespace, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
            for key, text in data.items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = text
    for var in container.get("env") or []:
        name = var.get("name", "")
        source = var.get("valueFrom")
        if not source:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value: str | None
        if "secretKeyRef" in source:
            value = _key_ref("Secret", source["secretKeyRef"], namespace, secrets)
        elif "configMapKeyRef" in source:
            value = _key_ref("ConfigMap", source["configMapKeyRef"], namespace, configmaps)
        elif "fieldRef" in source:
            value = field_ref_value(pod, source["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            value = resource_field_value(
                container, ref.get("resource", ""), ref.get("divisor"), node_allocatable
            )
        else:
            raise ConfigError(f"env {name}: valueFrom {sorted(source)} not supported")
        if value is not None:
            env[name] = value
    return env


def container_argv(
    container: Mapping[str, Any], image: ImageConfig, env: Mapping[str, str]
) -> list[str]:
    """``command``/``args`` against the image's entrypoint/cmd, ``$(VAR)`` expanded.

    command set → command + args; else entrypoint + (args if set, else cmd). Expansion uses
    the kubelet's variables only (the image's env is unknown to a kubelet).
    """
    command = [expand(str(c), env) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    if command:
        argv = command + args
    else:
        argv = list(image.entrypoint) + (args if container.get("args") else list(image.cmd))
    if not argv:
        raise ConfigError("no command specified")
    return argv


# --- user, groups ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def identity(pod: Mapping[str, Any], container: Mapping[str, Any], image: ImageConfig) -> Identity:
    """The uid/gid/groups a runtime would use, after the kubelet's ``runAsNonRoot`` checks."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}
    name = (pod.get("metadata") or {}).get("name", "")
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    where = f'(pod: "{name}_{namespace}", container: {container.get("name", "")})'
    run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    run_as_group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    image_user, _, image_group = image.user.partition(":")
    if run_as_user is None:
        if image_user and not image_user.isdigit():
            try:
                uid = pwd.getpwnam(image_user).pw_uid
            except KeyError as exc:
                raise ConfigError(
                    f"unable to find user {image_user}: no matching entries in passwd file"
                ) from exc
            if non_root:
                raise ConfigError(
                    f"container has runAsNonRoot and image has non-numeric user ({image_user}), "
                    f"cannot verify user is non-root {where}"
                )
        else:
            uid = int(image_user or 0)
            if non_root and uid == 0:
                raise ConfigError(f"container has runAsNonRoot and image will run as root {where}")
    else:
        uid = int(run_as_user)
        if non_root and uid == 0:
            raise ConfigError(f"container's runAsUser breaks non-root policy {where}")
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if run_as_group is not None:
        gid = int(run_as_group)
    elif image_group.isdigit():
        gid = int(image_group)
    else:
        gid = entry.pw_gid if entry else 0
    groups: list[int] = []
    if pod_sc.get("fsGroup") is not None:
        groups.append(int(pod_sc["fsGroup"]))
    groups.extend(int(g) for g in pod_sc.get("supplementalGroups") or [])
    return Identity(
        uid=uid, gid=gid, groups=tuple(dict.fromkeys(groups)), home=entry.pw_dir if entry else "/"
    )


# --- names, resolv.conf, hosts ----------------------------------------------------------


def pod_hostname(pod: Mapping[str, Any]) -> tuple[str, str]:
    """(hostname, fqdn-or-empty) as the kubelet computes them (63 characters at most)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    hostname = (spec.get("hostname") or meta.get("name", ""))[:63].rstrip("-.")
    subdomain = spec.get("subdomain", "")
    return hostname, subdomain


def _host_resolv(host_resolv: str) -> tuple[list[str], list[str], list[str]]:
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for line in host_resolv.splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if fields[0] == "nameserver":
            nameservers.extend(fields[1:2])
        elif fields[0] in {"search", "domain"}:
            searches = fields[1:]
        elif fields[0] == "options":
            options.extend(fields[1:])
    return nameservers, searches, options


def resolv_conf(
    pod: Mapping[str, Any], *, cluster_dns: str, cluster_domain: str, host_resolv: str
) -> str:
    """The pod's /etc/resolv.conf for its ``dnsPolicy`` and ``dnsConfig`` (kubelet dns.go)."""
    spec = pod.get("spec") or {}
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirst" and spec.get("hostNetwork"):
        policy = "Default"
    host_ns, host_search, host_options = _host_resolv(host_resolv)
    if policy in {"ClusterFirst", "ClusterFirstWithHostNet"}:
        nameservers = [cluster_dns]
        searches = [
            f"{namespace}.svc.{cluster_domain}",
            f"svc.{cluster_domain}",
            cluster_domain,
            *host_search,
        ]
        options = ["ndots:5"]
    elif policy == "Default":
        nameservers, searches, options = host_ns, host_search, host_options
    else:  # None
        nameservers, searches, options = [], [], []
    config = spec.get("dnsConfig") or {}
    nameservers = list(dict.fromkeys([*nameservers, *(config.get("nameservers") or [])]))[:3]
    searches = list(dict.fromkeys([*searches, *(config.get("searches") or [])]))[:32]
    merged: dict[str, str] = {}
    for option in options:
        merged[option.partition(":")[0]] = option
    for option in config.get("options") or []:
        name = option.get("name", "")
        merged[name] = f"{name}:{option['value']}" if option.get("value") is not None else name
    lines = [f"nameserver {n}" for n in nameservers]
    if searches:
        lines.append("search " + " ".join(searches))
    if merged:
        lines.append("options " + " ".join(merged.values()))
    return "\n".join(lines) + "\n"


def hosts_file(pod: Mapping[str, Any], pod_ip: str, cluster_domain: str) -> str:
    """The kubelet-managed /etc/hosts of a pod."""
    hostname, subdomain = pod_hostname(pod)
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if subdomain:
        lines.append(
            f"{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.{cluster_domain}\t{hostname}"
        )
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    aliases = (pod.get("spec") or {}).get("hostAliases") or []
    if aliases:
        lines.append("")
        lines.append("# Entries added by HostAliases.")
        for alias in aliases:
            lines.append(f"{alias.get('ip', '')}\t" + "\t".join(alias.get("hostnames") or []))
    return "\n".join(lines) + "\n"

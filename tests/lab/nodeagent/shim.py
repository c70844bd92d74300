"""The per-container shim: namespaces, mounts, identity, then ``exec`` of the container's argv.

Run by the node agent as ``python -I -S shim.py SPEC.json`` (standard library only, so it
starts fast and never imports the project). What a CRI runtime would do, on the host's
filesystem (the host filesystem is every container's rootfs):

``run`` mode (a container):
  1. a new session (so the agent can signal the container's process group) and, when the
     agent made one, the container's memory cgroup;
  2. ``setns`` into the pod's network namespace (``/run/netns/…``);
  3. ``unshare`` a private mount namespace and UTS namespace; the pod's hostname;
  4. bind mounts, deepest last: volumes at their ``mountPath`` (``readOnly`` → remounted
     read-only), ``/etc/resolv.conf``, ``/etc/hosts``, ``/etc/hostname`` and the
     termination-message file; missing mount points are created on the host (empty
     directories or files); one that exists with the wrong type (a file where the volume
     is a directory) fails the start with a message saying so;
  5. the working directory (created if missing, as a runtime does);
  6. ``setgroups``/``setgid``/``setuid``, ``PR_SET_NO_NEW_PRIVS`` when
     ``allowPrivilegeEscalation: false``, then ``PR_SET_PDEATHSIG=SIGKILL`` (after the
     credential change, which would clear it) so that the container dies with the agent;
  7. ``execvpe`` with the container's environment (``PATH`` from it); the spec's
     ``execFd`` is close-on-exec, so the agent sees the exec as the end of that pipe.
  Any failure before ``exec`` is written to the spec's ``errorFile`` and the shim exits
  128, which the agent reports as ``StartError`` (as containerd does).

``enter`` mode (exec probes): ``setns`` into the network, UTS and mount namespaces of a
running container's process, then the same identity steps and ``exec``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            None,
        ),
        f"mount {source} on {target}",
    )


class MountTargetError(Exception):
    """A mount point on the host that is of the wrong type (reported as is)."""


def _kind(is_dir: bool) -> str:
    return "a directory" if is_dir else "a file"


def _ensure_target(target: str, is_dir: bool) -> None:
    """The mount point, created on the host when missing (parents included); one that exists
    with the wrong type (a stale file where the volume is a directory) is a clear error."""
    if os.path.lexists(target) and not os.path.exists(target):
        return  # a dangling symlink: the mount reports it
    if os.path.exists(target):
        if os.path.isdir(target) != is_dir:
            raise MountTargetError(
                f"mount target {target} exists and is {_kind(not is_dir)}; "
                f"the volume is {_kind(is_dir)}"
            )
        return
    parent = target if is_dir else os.path.dirname(target) or "/"
    probe = parent
    while probe not in ("/", ""):  # a parent that is a file cannot hold the mount point
        if os.path.exists(probe) and not os.path.isdir(probe):
            raise MountTargetError(
                f"mount target {target}: {probe} exists and is a file, not a directory"
            )
        probe = os.path.dirname(probe)
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(parent, exist_ok=True)
        with open(target, "a"):
            pass


def bind(source: str, target: str, read_only: bool, is_dir: bool | None = None) -> None:
    _ensure_target(target, os.path.isdir(source) if is_dir is None else is_dir)
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)


def become(spec: dict[str, object]) -> None:
    """Groups, gid, uid; no_new_privs; the parent-death signal (after the credential change)."""
    groups = [int(g) for g in spec.get("groups", [])]  # type: ignore[attr-defined]
    os.setgroups(groups)
    os.setgid(int(spec["gid"]))  # type: ignore[call-overload]
    os.setuid(int(spec["uid"]))  # type: ignore[call-overload]
    if spec.get("noNewPrivs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if spec.get("agentPid") and os.getppid() != int(spec["agentPid"]):  # type: ignore[call-overload]
        os._exit(137)  # the agent is already gone


def run(spec: dict[str, object]) -> None:
    os.setsid()
    cgroup = spec.get("cgroupProcs")
    if cgroup:
        with open(str(cgroup), "w") as procs:
            procs.write(str(os.getpid()))
    if spec.get("netns"):
        setns(str(spec["netns"]), CLONE_NEWNET)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(mount, uts)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    hostname = str(spec.get("hostname", ""))
    if hostname:
        _check(_libc.sethostname(hostname.encode(), len(hostname.encode())), "sethostname")
    mounts = list(spec.get("mounts", []))  # type: ignore[call-overload]
    mounts.sort(key=lambda m: os.path.normpath(m["target"]).count("/"))
    # Every source is opened before the first mount: a volume mounted over a parent of the
    # sources (an emptyDir at /tmp while the agent's work directory is under /tmp) would
    # hide the ones after it. Bind mounts then take /proc/self/fd/N.
    sources = []
    for entry in mounts:
        fd = os.open(entry["source"], os.O_PATH | os.O_CLOEXEC)
        sources.append((fd, stat.S_ISDIR(os.fstat(fd).st_mode)))
    for entry, (fd, is_dir) in zip(mounts, sources, strict=True):
        bind(f"/proc/self/fd/{fd}", entry["target"], bool(entry.get("readOnly")), is_dir)
        os.close(fd)
    cwd = str(spec.get("workingDir") or "/")
    os.makedirs(cwd, exist_ok=True)
    become(spec)
    os.chdir(cwd)


def enter(spec: dict[str, object]) -> None:
    pid = int(spec["pid"])  # type: ignore[call-overload]
    fds = [
        (os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY), flag)
        for ns, flag in (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS), ("mnt", CLONE_NEWNS))
    ]
    for fd, flag in fds:
        _check(_libc.setns(fd, flag), f"setns {flag:#x} of pid {pid}")
        os.close(fd)
    become(spec)
    os.chdir(str(spec.get("workingDir") or "/"))


def execvpe(argv: list[str], env: dict[str, str]) -> None:
    """``execvp`` with the container's PATH, importing nothing (the stdlib may be unreadable
    to the container's user)."""
    if "/" in argv[0]:
        os.execve(argv[0], argv, env)
    denied: OSError | None = None
    for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
        path = os.path.join(directory or ".", argv[0])
        try:
            os.execve(path, argv, env)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            denied = exc
    if denied is not None:
        raise denied
    raise FileNotFoundError(2, "not found")


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    if spec.get("execFd") is not None:
        os.set_inheritable(int(spec["execFd"]), False)  # closed by exec: "the container runs"
    error_file = spec.get("errorFile")
    # opened before the identity change, closed by exec: written only when the start fails
    error_fd = (
        os.open(error_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        if error_file
        else -1
    )
    executing = False
    try:
        for name in ("SIGPIPE", "SIGXFSZ", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        if spec.get("mode") == "enter":
            enter(spec)
        else:
            run(spec)
        argv = [str(a) for a in spec["argv"]]
        env = {str(k): str(v) for k, v in spec["env"].items()}
        executing = True
        execvpe(argv, env)
    except MountTargetError as exc:
        _start_error(error_fd, str(exc))
    except OSError as exc:
        message = str(exc)
        if (
            executing  # not a mount's ENOENT
            and isinstance(exc, FileNotFoundError)
            and exc.filename is None
            and "/" not in str(spec["argv"][0])
        ):
            message = f'exec: "{spec["argv"][0]}": executable file not found in $PATH'
        elif exc.filename is not None and not str(exc.strerror).startswith(("setns", "mount")):
            message = f"{exc.strerror}: {exc.filename}"
        _start_error(error_fd, message)


def _start_error(error_fd: int, message: str) -> None:
    """What a failed start reports (containerd's words around it), then exit 128."""
    text = f"failed to create containerd task: failed to create shim task: {message}"
    if error_fd >= 0:
        os.write(error_fd, text.encode())
    os._exit(128)


if __name__ == "__main__":
    main()

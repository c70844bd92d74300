"""The reward sandbox's host process: runs users' reward functions, one call at a time.

Two ways to run it; it imports nothing of TideTune (standard library only) so that it
can run from any Python that has the functions' own requirements (the reward runtime
image):

- **a child of the trainer** (``tidetune run``, a pod without the reward container):
  :mod:`tidetune_trainer.rl.sandbox` starts ``python -I sandbox_host.py`` with an empty
  environment and speaks over its stdin/stdout;
- **its own container** (on a cluster: the ``reward-runtime`` sidecar of the trainer
  pod): ``python -I -m tidetune_trainer.rl.sandbox_host --listen SOCKET`` listens on a
  Unix socket in a folder the pod shares with the trainer (an ``emptyDir``); each
  connection (one per trainer rank) gets a forked handler with a fresh working folder
  under ``--home``. The handler decides who the code runs as (``nobody`` when the
  container is root, else the container's user) — the trainer's setup cannot change it.

Protocol: JSON lines; the first line is the setup, each later line a call; one reply
line for each.

Order of events (the privileged steps first, user code last):

1. if asked and permitted: a new network namespace (no interface is up, so nothing —
   not even loopback — is reachable) and a new mount namespace with empty tmpfs over
   the ServiceAccount and secret directories; without root, a user namespace is tried
   to get the same;
2. drop to the given uid/gid (``nobody``) when running as root, with no supplementary
   groups;
3. move stdout/stderr away from the protocol pipe, load each function's source (a
   module per rule, with its file name so tracebacks show the user's lines), check its
   declared requirements are installed;
4. serve calls: each call runs in a forked child, in its own session (process group),
   with ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_NPROC`` (fork bombs) and no core
   files; the host waits for the child's answer until the wall-clock limit, then kills
   the whole process group. The child's stdout/stderr are returned as the call's logs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import json
import linecache
import math
import os
import pwd
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import types
from typing import IO, Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
MS_REC, MS_PRIVATE = 0x4000, 0x40000
HIDDEN_DIRS = ("/var/run/secrets", "/run/secrets")
LOG_LIMIT = 16_384
RESULT_LIMIT = 64 * 1024 * 1024


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _unshare(flags: int) -> bool:
    return bool(_libc().unshare(flags) == 0)


def _traversable_by_others(path: str) -> bool:
    """Whether every folder on the way to ``path`` lets other users through (o+x)."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except OSError:
            return True  # does not exist: nothing to expose
        if os.path.isdir(d) and not st.st_mode & 0o001:
            return False
    return True


def _blocking_ancestor(path: str) -> str | None:
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i])
        try:
            if os.path.isdir(d) and not os.stat(d).st_mode & 0o001:
                return d
        except OSError:
            return None
    return None


def expose_python(libc: Any) -> list[str]:
    """In a private mount namespace, make the interpreter's own folders reachable for
    the unprivileged user when a private ancestor (``/root`` of a pyenv install) blocks
    them: an empty tmpfs covers the ancestor (hiding the rest of it) and only the
    interpreter's folders are bound back, read-only."""
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p})
    exposed: list[str] = []
    by_ancestor: dict[str, list[str]] = {}
    for p in needed:
        if not os.path.exists(p) or _traversable_by_others(p):
            continue
        anc = _blocking_ancestor(p)
        if anc is not None:
            by_ancestor.setdefault(anc, []).append(p)
    for anc, paths in by_ancestor.items():
        # keep handles on the real folders before the ancestor is covered
        tops = sorted({os.sep.join(p.split(os.sep)[: len(anc.split(os.sep)) + 1]) for p in paths})
        handles = {t: os.open(t, os.O_PATH | os.O_DIRECTORY) for t in tops if os.path.isdir(t)}
        if (
            libc.mount(
                b"tmpfs", anc.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"
            )
            != 0
        ):
            continue
        for t, fd in handles.items():
            os.mkdir(t, 0o755)
            src = f"/proc/self/fd/{fd}".encode()
            if libc.mount(src, t.encode(), None, MS_BIND | MS_REC, None) == 0:
                libc.mount(None, t.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, None)
                exposed.append(t)
            os.close(fd)
    return exposed


def _map_own_ids(uid: int, gid: int) -> str:
    """In a user namespace just made without privileges: map the process's own uid and
    gid to themselves (the one mapping it may write), so that user code sees who it
    really is and the files it makes, and ``/proc`` owners, read right. Unmapped, every
    id reads as the overflow id (65534) — the process's own and every other process's
    alike. Returns "mapped", or "unmapped" where the kernel refuses."""
    try:
        for name, data in (
            ("setgroups", "deny"),  # required before an unprivileged gid_map
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(data)
    except OSError:
        return "unmapped"
    return "mapped"


def processes_of(uid: int) -> int:
    """How many processes ``uid`` has now (0 when ``/proc`` cannot be read)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    n = 0
    for p in names:
        if p.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{p}").st_uid == uid
    return n


def isolate(want_net: bool, uid: int, gid: int) -> dict[str, Any]:
    """Namespaces and the user switch; returns what was achieved (for the ready line)."""
    info: dict[str, Any] = {"network": "shared", "mounts": "shared"}
    euid, egid = os.geteuid(), os.getegid()
    root = euid == 0
    if root:
        flags = CLONE_NEWNS | (CLONE_NEWNET if want_net else 0)
        if _unshare(flags):
            if want_net:
                info["network"] = "isolated"
            libc = _libc()
            libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
            hidden = []
            for d in HIDDEN_DIRS:
                if (
                    os.path.isdir(d)
                    and libc.mount(
                        b"tmpfs", d.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=1k"
                    )
                    == 0
                ):
                    hidden.append(d)
            info["mounts"] = "private"
            info["hidden"] = hidden
            if uid >= 0:
                info["exposed"] = expose_python(libc)
        elif want_net and _unshare(CLONE_NEWNET):
            info["network"] = "isolated"
    elif want_net and _unshare(CLONE_NEWUSER | CLONE_NEWNET):
        info["network"] = "isolated"
        info["userns"] = _map_own_ids(euid, egid)
    if root and uid >= 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    info["uid"] = os.getuid()
    return info


def check_requirements(reqs: list[str]) -> list[str]:
    """The requirements that are not installed (or at a version that does not fit)."""
    from importlib import metadata

    missing = []
    for req in reqs:
        name = req
        for sep in "[<>=!~ ":
            name = name.split(sep, 1)[0]
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{req} (not installed)")
            continue
        try:
            from packaging.requirements import Requirement

            spec = Requirement(req).specifier
            if spec and not spec.contains(version, prereleases=True):
                missing.append(f"{req} (installed: {version})")
        except ImportError:  # no packaging here: presence is what can be checked
            pass
    return missing


def load_function(source: str, filename: str, entrypoint: str) -> Any:
    """Execute ``source`` as a module and return its ``entrypoint``."""
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    module = types.ModuleType(os.path.splitext(os.path.basename(filename))[0] or "reward")
    module.__file__ = filename
    code = compile(source, filename, "exec")
    exec(code, module.__dict__)
    fn = module.__dict__.get(entrypoint)
    if fn is None:
        defined = sorted(
            k for k, v in module.__dict__.items() if callable(v) and not k.startswith("_")
        )
        raise LookupError(
            f"{filename} defines no {entrypoint!r} (callables: {', '.join(defined) or 'none'}); "
            "set function.entrypoint"
        )
    if not callable(fn):
        raise TypeError(f"{entrypoint!r} in {filename} is a {type(fn).__name__}, not a function")
    return fn


def user_traceback(exc: BaseException, filename: str) -> str:
    """The exception with the frames of the user's file only (the last one first)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    head = f"{type(exc).__name__}: {exc}"
    if not frames:
        return head
    where = [
        f"{f.filename}, line {f.lineno}, in {f.name}: {(f.line or '').strip()}" for f in frames
    ]
    return head + "\n  at " + "\n  from ".join(reversed(where))


def _limit(kind: int, value: int, hard: int | None = None) -> None:
    try:
        resource.setrlimit(kind, (value, value if hard is None else hard))
    except (ValueError, OSError):
        _soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY and value > hard:
            resource.setrlimit(kind, (hard, hard))


def _child(
    fn: Any, call: dict[str, Any], limits: dict[str, Any], out_fd: int, log_fd: int, filename: str
) -> None:
    os.setsid()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    # nothing else of the host stays open in user code: not the protocol (a pipe or the
    # trainer's socket), not the listening socket; only this call's answer pipe
    keep = max(out_fd, 2) + 1
    os.closerange(3, out_fd)
    os.closerange(keep, 1 << 16)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_AS, int(limits["memory_mb"]) * 1024 * 1024)
    cpu = max(1, math.ceil(float(limits["timeout"])))
    _limit(resource.RLIMIT_CPU, cpu, cpu + 2)  # SIGXCPU first; SIGKILL if it is caught
    _limit(resource.RLIMIT_NPROC, int(limits["nproc"]))
    _limit(resource.RLIMIT_FSIZE, 64 * 1024 * 1024)
    try:
        result = fn(call["prompts"], call["completions"], **call["columns"])
        if not isinstance(result, (list, tuple)):
            with contextlib.suppress(TypeError):
                result = list(result)  # numpy arrays, generators
        if isinstance(result, (list, tuple)):
            clean: list[Any] = []
            for v in result:
                if hasattr(v, "item") and not isinstance(v, (int, float)):
                    with contextlib.suppress(Exception):
                        v = v.item()
                clean.append(v if isinstance(v, (int, float, str, type(None), bool)) else repr(v))
            reply: dict[str, Any] = {"scores": clean}
        else:
            reply = {"bad": f"returned {type(result).__name__}"}
        text = json.dumps(reply, allow_nan=True)
    except BaseException as e:  # the user's error: report it with their own lines
        text = json.dumps({"error": user_traceback(e, filename)})
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    data = text.encode()
    view = memoryview(data)
    while view:
        n = os.write(out_fd, view)
        view = view[n:]
    os._exit(0)


def _children() -> list[int]:
    """This process's children (orphans of a call come here: the host is a subreaper)."""
    me, out = os.getpid(), []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            out.append(int(p))
    return out


def reap(pid: int, seconds: float = 5.0) -> int:
    """Kill the call's session and every process it left behind; wait for all of them.
    Returns the call's own wait status."""
    status = 0
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # the call's whole session
        kids = _children()
        for k in kids:  # escaped the session (setsid) but orphaned to us: kill too
            with contextlib.suppress(OSError):
                os.kill(k, signal.SIGKILL)
        while True:
            try:
                done, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if done == 0:
                break
            if done == pid:
                status = st
        if time.monotonic() > deadline:
            return status
        time.sleep(0.01)


def run_call(
    fn: Any, call: dict[str, Any], limits: dict[str, Any], filename: str
) -> dict[str, Any]:
    """One call in a forked, limited child; never blocks past the wall-clock limit."""
    r_out, w_out = os.pipe()
    r_log, w_log = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r_out)
            os.close(r_log)
            _child(fn, call, limits, w_out, w_log, filename)
        finally:
            os._exit(70)
    os.close(w_out)
    os.close(w_log)
    deadline = t0 + float(limits["timeout"])
    chunks: list[bytes] = []
    logs: list[bytes] = []
    size = log_size = 0
    open_fds = {r_out, r_log}
    timed_out = too_big = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(list(open_fds), [], [], left)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                open_fds.discard(fd)
                continue
            if fd == r_out:
                size += len(data)
                if size > RESULT_LIMIT:
                    too_big = True
                    open_fds.clear()
                    break
                chunks.append(data)
            else:
                if log_size < LOG_LIMIT:
                    logs.append(data[: LOG_LIMIT - log_size])
                log_size += len(data)
    status = reap(pid)
    os.close(r_out)
    os.close(r_log)
    seconds = time.monotonic() - t0
    log_text = b"".join(logs).decode("utf-8", "replace")
    if log_size > LOG_LIMIT:
        log_text += f"\n… ({log_size - LOG_LIMIT} more bytes of output)"
    base: dict[str, Any] = {"seconds": round(seconds, 4), "logs": log_text}
    if timed_out:
        return {**base, "error": f"timed out after {limits['timeout']:g} s (wall clock); killed"}
    if too_big:
        return {**base, "error": "returned more than 64 MiB"}
    raw = b"".join(chunks)
    if not raw:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = (
                signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            )
            why = {
                "SIGXCPU": f"used more than {limits['timeout']:g} s of CPU",
                "SIGKILL": "was killed (it went on past its CPU limit, or out of memory)",
                "SIGSEGV": "crashed (segmentation fault; out of memory?)",
            }.get(name, f"was killed by {name}")
            return {**base, "error": f"the function {why}"}
        return {**base, "error": f"the function exited without an answer (status {status})"}
    try:
        reply = json.loads(raw)
    except json.JSONDecodeError:
        return {**base, "error": "the function's answer could not be read"}
    return {**base, **reply}


def serve(rfile: IO[str], proto: IO[str], *, home: str | None = None) -> int:
    """Read the setup, load the functions, answer calls until ``rfile`` ends.

    ``home`` (the socket mode): this process chooses the user (``nobody`` when it is
    root) and works in ``home``; the setup's ``uid``, ``gid`` and ``cwd`` are ignored."""
    _libc().prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: a call's orphans are ours
    line = rfile.readline()
    if not line.strip():
        return 0
    setup = json.loads(line)
    if home is not None:
        uid, gid = _nobody() if os.geteuid() == 0 else (-1, -1)
        cwd = home
    else:
        uid, gid, cwd = int(setup["uid"]), int(setup["gid"]), setup.get("cwd") or "/"
    # RLIMIT_NPROC counts all the user's processes: the calls get 32 more than it has.
    # Counted before isolating: in a user namespace other processes' owners may read
    # as the overflow id
    runs_as = uid if os.geteuid() == 0 and uid >= 0 else os.geteuid()
    nproc_base = processes_of(runs_as) if runs_as != 0 else 0
    info = isolate(bool(setup.get("network_isolation", True)), uid, gid)
    if home is not None:
        info["runtime"] = "container"
    os.chdir(cwd)
    # user code never writes into the protocol: its prints go to a log pipe per call
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    limits = dict(setup["limits"])
    limits["nproc"] = nproc_base + int(limits.get("nproc", 32))
    fns: list[Any] = []
    problems: list[str] = []
    for rule in setup["rules"]:
        filename = rule["filename"]
        missing = check_requirements(list(rule.get("requirements", [])))
        if missing:
            problems.append(
                f"{rule['name']}: requirements not met in the reward runtime: {', '.join(missing)}"
            )
            fns.append(None)
            continue
        try:
            fns.append(load_function(rule["source"], filename, rule["entrypoint"]))
        except BaseException as e:
            problems.append(
                f"{rule['name']}: cannot load {filename}: {user_traceback(e, filename)}"
            )
            fns.append(None)
    proto.write(json.dumps({"ready": not problems, "problems": problems, **info}) + "\n")
    proto.flush()
    if problems:
        return 0
    for line in rfile:
        if not line.strip():
            continue
        call = json.loads(line)
        i = int(call["rule"])
        try:
            reply = run_call(fns[i], call, limits, setup["rules"][i]["filename"])
        except OSError as e:  # fork refused, say
            reply = {
                "error": f"the sandbox could not run the call: {os.strerror(e.errno or errno.EIO)}"
            }
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
    return 0


def _nobody() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:  # pragma: no cover - a minimal image without the user
        return 65534, 65534


def _handle(conn: socket.socket, home: str) -> int:
    """One trainer connection, in its own forked process (see :func:`serve`)."""
    rfile = conn.makefile("r", encoding="utf-8", newline="\n")
    proto = conn.makefile("w", encoding="utf-8", newline="\n")
    try:
        return serve(rfile, proto, home=home)
    except (BrokenPipeError, ConnectionError):
        return 0  # the trainer went away: so do we


def listen(path: str, home: str, *, mode: int = 0o666) -> int:
    """The reward runtime container: serve each connection to the Unix socket ``path``
    in a forked handler, until SIGTERM (then the handlers and their calls are killed and
    the socket removed)."""
    _libc().prctl(36, 1, 0, 0, 0)  # orphans of handlers come here to be reaped
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    os.makedirs(home, exist_ok=True)
    if os.path.exists(path) or os.path.islink(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    # only the pod's containers mount the folder; the trainer runs as another user
    os.chmod(path, mode)
    server.listen(64)
    stopping: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    handlers: dict[int, str] = {}  # pid -> its working folder
    print(f"reward runtime: listening on {path}", file=sys.stderr, flush=True)
    while not stopping:
        try:
            ready, _, _ = select.select([server], [], [], 0.5)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            ready = []
        _reap_handlers(handlers)
        if not ready or stopping:
            continue
        try:
            conn, _ = server.accept()
        except OSError:
            continue
        work = tempfile.mkdtemp(prefix="conn-", dir=home)
        if os.geteuid() == 0:
            uid, gid = _nobody()
            os.chown(work, uid, gid)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the handler
            code = 70
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                server.close()
                code = _handle(conn, work)
            finally:
                os._exit(code)
        conn.close()
        handlers[pid] = work
    for pid in list(handlers):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while handlers and time.monotonic() < deadline:
        _reap_handlers(handlers)
        time.sleep(0.05)
    server.close()
    with contextlib.suppress(OSError):
        os.unlink(path)
    return 0


def _reap_handlers(handlers: dict[int, str]) -> None:
    """Wait for every exited child (handlers, and orphans that came here); remove the
    working folder of each handler that ended."""
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        work = handlers.pop(pid, None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sandbox_host", description="TideTune's reward sandbox host."
    )
    parser.add_argument("--listen", metavar="SOCKET", help="serve on this Unix socket")
    parser.add_argument(
        "--home",
        default=os.environ.get("TMPDIR") or "/tmp",
        help="where each connection's working folder is made (socket mode)",
    )
    args = parser.parse_args(argv)
    if args.listen:
        return listen(args.listen, args.home)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    return serve(sys.stdin, proto)


if __name__ == "__main__":
    sys.exit(main())

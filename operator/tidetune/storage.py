"""Object storage for TideTune: one small interface, one backend per URI scheme.

Supported URIs (``open_store`` resolves them):

- ``file:///abs/path`` and plain paths (``/abs/path``, ``rel/path``): the local file system;
  ``file://rel/path`` is relative to the working directory.
- ``pvc://claim/path``: a PersistentVolumeClaim mounted into the pod, resolved to
  ``$TIDETUNE_PVC_ROOT/<claim>/<path>`` (default root ``/mnt/pvc``).
- ``s3://bucket/prefix``: any S3-compatible store, through the ``minio`` client (imported
  lazily, so this module stays light). Endpoint and keys come from ``S3Credentials``
  passed explicitly, or from the environment that the job's ``storageSecretRef`` fills:
  ``TIDETUNE_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (optional
  ``AWS_REGION``). Endpoints given as ``http://…`` or on a loopback host use plain HTTP.

``open_store(uri)`` returns ``(store, key)``: the store of the URI's container (the local
file system, a claim's mount, a bucket) and the key inside it. Keys are ``/``-separated
relative paths. ``list`` and ``delete`` treat a prefix as a directory: ``ckpt/step-1``
covers ``ckpt/step-1`` itself and everything under ``ckpt/step-1/`` but not
``ckpt/step-10``.

Every failure raises ``StorageError`` naming the URI and what to do; credentials are never
part of a message or a ``repr``. New schemes plug in with ``register_scheme``.
"""

from __future__ import annotations

import abc
import builtins
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "LocalStore",
    "ObjectStore",
    "S3Credentials",
    "S3Store",
    "StorageError",
    "delete",
    "exists",
    "open_store",
    "read_bytes",
    "register_scheme",
    "write_bytes",
]

PVC_ROOT_ENV = "TIDETUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
S3_ENDPOINT_ENV = "TIDETUNE_S3_ENDPOINT"
S3_ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
S3_SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
S3_REGION_ENV = "AWS_REGION"
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"


class StorageError(Exception):
    """An object-storage operation failed; the message names the URI and what to do."""

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


def _norm_key(key: str, *, uri: str) -> str:
    """Normalise a key to ``a/b/c``; refuse ``..`` segments that would leave the store."""
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StorageError(
            f"{uri}: '..' is not allowed in a storage key ({key!r}); use a path inside the store",
            uri=uri,
        )
    return "/".join(parts)


def _under(key: str, prefix: str) -> bool:
    return prefix == "" or key == prefix or key.startswith(prefix + "/")


class ObjectStore(abc.ABC):
    """A flat key space with ``/``-separated keys (a directory tree, a bucket).

    Every method raises ``StorageError`` on failure; missing keys raise it too, except in
    ``exists``, ``list`` and ``delete``.
    """

    #: URI of the store's root; ``uri(key)`` appends the key.
    base_uri: str

    def uri(self, key: str = "") -> str:
        """The full URI of ``key`` in this store."""
        key = _norm_key(key, uri=self.base_uri)
        return self.base_uri + key

    @staticmethod
    def join(*parts: str) -> str:
        """Join key parts with ``/`` (empty parts are skipped, slashes collapsed)."""
        return "/".join(p.strip("/") for p in parts if p.strip("/"))

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The whole object."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Create or replace the object; readers never see a half-written object."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is an object (not a mere prefix)."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All object keys at or under ``prefix`` (recursive), sorted."""

    @abc.abstractmethod
    def delete(self, prefix: str) -> int:
        """Delete the object ``prefix`` and everything under ``prefix/``; return the count."""

    @abc.abstractmethod
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Stream a local file into the store (multipart for big files where supported)."""

    @abc.abstractmethod
    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        """Stream an object to a local file (written to a temp file, then renamed)."""

    def read_text(self, key: str, encoding: str = "utf-8") -> str:
        """The object decoded as text; a decoding error raises ``StorageError``."""
        data = self.read_bytes(key)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as e:
            raise StorageError(
                f"{self.uri(key)}: not valid {encoding} text at byte {e.start}; "
                "save the file as UTF-8",
                uri=self.uri(key),
            ) from None

    def write_text(self, key: str, text: str, encoding: str = "utf-8") -> None:
        """Write ``text`` encoded as ``encoding``."""
        self.write_bytes(key, text.encode(encoding))

    def upload_dir(self, local_dir: str | os.PathLike[str], prefix: str) -> builtins.list[str]:
        """Upload every file under ``local_dir`` to ``prefix/<relative path>``; keys written."""
        root = Path(local_dir)
        keys: list[str] = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = self.join(prefix, path.relative_to(root).as_posix())
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[Path]:
        """Download every object under ``prefix`` into ``local_dir``; the files written."""
        prefix = _norm_key(prefix, uri=self.base_uri)
        out: list[Path] = []
        for key in self.list(prefix):
            rel = key[len(prefix) :].lstrip("/") if prefix else key
            if not rel:  # the prefix is itself an object
                rel = key.rsplit("/", 1)[-1]
            target = Path(local_dir) / rel
            self.download_file(key, target)
            out.append(target)
        return out


# --------------------------------------------------------------------------- local


class LocalStore(ObjectStore):
    """A directory tree: ``file://`` (rooted at ``/``) and ``pvc://claim`` (the mount)."""

    def __init__(self, root: str | os.PathLike[str], base_uri: str) -> None:
        self.root = Path(root)
        self.base_uri = base_uri

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r}, base_uri={self.base_uri!r})"

    def path(self, key: str) -> Path:
        """The local path of ``key``."""
        key = _norm_key(key, uri=self.base_uri)
        return self.root / key if key else self.root

    def _fail(self, key: str, action: str, err: OSError) -> StorageError:
        what = err.strerror or type(err).__name__
        hint = ""
        if isinstance(err, FileNotFoundError):
            hint = "; check the path (and for pvc:// that the claim is mounted)"
        elif isinstance(err, PermissionError):
            hint = "; check the file permissions / the volume's fsGroup"
        elif isinstance(err, IsADirectoryError):
            hint = "; this is a directory, name a file inside it"
        uri = self.uri(key)
        return StorageError(f"{uri}: cannot {action}: {what}{hint}", uri=uri)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except OSError as e:
            raise self._fail(key, "read", e) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise self._fail(key, "write", e) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            p = self.path(key)
            if not p.is_file():
                raise FileNotFoundError(2, "No such file", str(p))
            return p.stat().st_size
        except OSError as e:
            raise self._fail(key, "stat", e) from None

    def list(self, prefix: str = "") -> list[str]:
        prefix = _norm_key(prefix, uri=self.base_uri)
        p = self.path(prefix)
        if p.is_file():
            return [prefix]
        if not p.is_dir():
            return []
        keys: list[str] = []
        try:
            for dirpath, _dirs, files in os.walk(p):
                rel_dir = Path(dirpath).relative_to(self.root).as_posix()
                for name in files:
                    if name.startswith(".") and name.endswith(".tmp"):
                        continue  # an in-flight atomic write
                    keys.append(name if rel_dir == "." else f"{rel_dir}/{name}")
        except OSError as e:
            raise self._fail(prefix, "list", e) from None
        return sorted(keys)

    def delete(self, prefix: str) -> int:
        prefix = _norm_key(prefix, uri=self.base_uri)
        if not prefix:
            raise StorageError(
                f"{self.base_uri}: refusing to delete the whole store; name a prefix",
                uri=self.base_uri,
            )
        p = self.path(prefix)
        try:
            if p.is_file() or p.is_symlink():
                p.unlink()
                return 1
            if p.is_dir():
                n = len(self.list(prefix))
                shutil.rmtree(p)
                return n
        except OSError as e:
            raise self._fail(prefix, "delete", e) from None
        return 0

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            try:
                shutil.copyfile(local_path, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise self._fail(key, f"upload {os.fspath(local_path)} to", e) from None

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        src = self.path(key)
        dst = Path(local_path)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise self._fail(key, f"download to {dst}", e) from None


# --------------------------------------------------------------------------- s3


@dataclass(frozen=True)
class S3Credentials:
    """Where an S3-compatible store is and how to sign in. ``repr`` hides the keys.

    ``endpoint`` is ``host[:port]`` or a URL (``http://…`` / ``https://…``). Without a
    scheme, loopback hosts use HTTP and everything else HTTPS; ``secure`` overrides it.
    """

    endpoint: str = DEFAULT_S3_ENDPOINT
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str | None = None
    secure: bool | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Credentials:
        """Read ``TIDETUNE_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
        and ``AWS_REGION`` (the variables the job's ``storageSecretRef`` fills)."""
        env = os.environ if env is None else env
        return cls(
            endpoint=env.get(S3_ENDPOINT_ENV) or DEFAULT_S3_ENDPOINT,
            access_key=env.get(S3_ACCESS_KEY_ENV) or None,
            secret_key=env.get(S3_SECRET_KEY_ENV) or None,
            region=env.get(S3_REGION_ENV) or env.get("AWS_DEFAULT_REGION") or None,
        )

    def host_and_secure(self) -> tuple[str, bool]:
        """``(host[:port], use_https)`` for the minio client."""
        ep = self.endpoint.strip()
        if "://" in ep:
            parts = urlsplit(ep)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise StorageError(
                    f"S3 endpoint {ep!r} is not valid; use host:port, http://host:port "
                    "or https://host",
                )
            if parts.path not in ("", "/"):
                raise StorageError(f"S3 endpoint {ep!r} has a path; give only scheme://host[:port]")
            host, secure = parts.netloc, parts.scheme == "https"
        else:
            host = ep.rstrip("/")
            secure = not _is_loopback(host)
        if self.secure is not None:
            secure = self.secure
        return host, secure


def _is_loopback(host_port: str) -> bool:
    host = host_port
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class S3Store(ObjectStore):
    """A bucket of an S3-compatible store, through ``minio`` (imported on first use)."""

    def __init__(self, bucket: str, credentials: S3Credentials | None = None) -> None:
        self.bucket = bucket
        self.base_uri = f"s3://{bucket}/"
        self.credentials = credentials if credentials is not None else S3Credentials.from_env()
        #: multipart part size for ``upload_file`` (S3 allows 5 MiB – 5 GiB)
        self.part_size = 64 * 1024 * 1024
        self._client: Any = None

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, endpoint={self.credentials.endpoint!r})"

    @property
    def client(self) -> Any:
        """The ``minio.Minio`` client (bounded timeouts and retries)."""
        if self._client is None:
            try:
                import minio
                import urllib3
            except ImportError:  # pragma: no cover - the trainer image has it
                raise StorageError(
                    f"{self.base_uri}: s3:// needs the 'minio' package; pip install minio",
                    uri=self.base_uri,
                ) from None
            host, secure = self.credentials.host_and_secure()
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=10.0, read=120.0),
                retries=urllib3.Retry(
                    total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
                ),
                maxsize=10,
            )
            self._client = minio.Minio(
                host,
                access_key=self.credentials.access_key,
                secret_key=self.credentials.secret_key,
                region=self.credentials.region,
                secure=secure,
                http_client=http,
            )
        return self._client

    def _fail(self, key: str, action: str, err: BaseException) -> StorageError:
        uri = self.uri(key) if key else self.base_uri
        code = getattr(err, "code", None)
        endpoint = self.credentials.endpoint
        if code in ("NoSuchKey", "NoSuchObject"):
            msg = f"{uri}: cannot {action}: no such object; check the URI"
        elif code == "NoSuchBucket":
            msg = (
                f"{uri}: cannot {action}: bucket {self.bucket!r} does not exist at {endpoint}; "
                "create it or fix the URI"
            )
        elif code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            msg = (
                f"{uri}: cannot {action}: access denied ({code}) at {endpoint}; check the keys in "
                f"the storage Secret ({S3_ACCESS_KEY_ENV}/{S3_SECRET_KEY_ENV})"
            )
        elif code is not None:
            msg = f"{uri}: cannot {action}: S3 error {code} at {endpoint}"
        elif isinstance(err, OSError) and not type(err).__module__.startswith("urllib3"):
            msg = f"{uri}: cannot {action}: {err.strerror or err}"
        else:
            msg = (
                f"{uri}: cannot {action}: S3 endpoint {endpoint} unreachable "
                f"({type(err).__name__}); check {S3_ENDPOINT_ENV} and the network"
            )
        return StorageError(msg, uri=uri)

    def _call(self, key: str, action: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except StorageError:
            raise
        except Exception as e:  # minio.error.S3Error, urllib3 errors, OSError
            raise self._fail(key, action, e) from None

    def read_bytes(self, key: str) -> bytes:
        key = _norm_key(key, uri=self.base_uri)

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        data: bytes = self._call(key, "read", get)
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        import io

        key = _norm_key(key, uri=self.base_uri)
        self._call(
            key,
            "write",
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)),
        )

    def _stat(self, key: str) -> Any:
        return self.client.stat_object(self.bucket, key)

    def exists(self, key: str) -> bool:
        key = _norm_key(key, uri=self.base_uri)
        if not key:
            return False
        try:
            self._stat(key)
            return True
        except Exception as e:
            if getattr(e, "code", None) in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return False
            raise self._fail(key, "stat", e) from None

    def size(self, key: str) -> int:
        key = _norm_key(key, uri=self.base_uri)
        st = self._call(key, "stat", lambda: self._stat(key))
        return int(st.size)

    def _iter(self, prefix: str) -> Iterator[str]:
        if prefix:
            # the object named exactly `prefix`, then everything under `prefix/`
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=False):
                if obj.object_name == prefix:
                    yield prefix
            under = prefix + "/"
        else:
            under = ""
        for obj in self.client.list_objects(self.bucket, prefix=under or None, recursive=True):
            yield str(obj.object_name)

    def list(self, prefix: str = "") -> list[str]:
        prefix = _norm_key(prefix, uri=self.base_uri)
        keys: list[str] = self._call(prefix, "list", lambda: list(self._iter(prefix)))
        return sorted(k for k in keys if _under(k, prefix))

    def delete(self, prefix: str) -> int:
        prefix = _norm_key(prefix, uri=self.base_uri)
        if not prefix:
            raise StorageError(
                f"{self.base_uri}: refusing to delete the whole bucket; name a prefix",
                uri=self.base_uri,
            )
        keys = self.list(prefix)
        if not keys:
            return 0

        def remove() -> None:
            from minio.deleteobjects import DeleteObject

            errors = list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
            if errors:
                first = errors[0]
                raise StorageError(
                    f"{self.uri(prefix)}: cannot delete {len(errors)} object(s), first "
                    f"{first.name}: {first.code}",
                    uri=self.uri(prefix),
                )

        self._call(prefix, "delete", remove)
        return len(keys)

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        key = _norm_key(key, uri=self.base_uri)
        self._call(
            key,
            f"upload {os.fspath(local_path)} to",
            lambda: self.client.fput_object(
                self.bucket, key, os.fspath(local_path), part_size=self.part_size
            ),
        )

    def download_file(self, key: str, local_path: str | os.PathLike[str]) -> None:
        key = _norm_key(key, uri=self.base_uri)
        dst = Path(local_path)

        def get() -> None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
            try:
                resp = self.client.get_object(self.bucket, key)
                try:
                    with os.fdopen(fd, "wb") as f:
                        for chunk in resp.stream(1024 * 1024):
                            f.write(chunk)
                finally:
                    resp.close()
                    resp.release_conn()
                os.replace(tmp, dst)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

        self._call(key, f"download to {dst}", get)


# --------------------------------------------------------------------------- registry

#: ``factory(uri, credentials) -> (store, key)`` for one URI scheme.
StoreFactory = Callable[[str, "S3Credentials | None"], tuple[ObjectStore, str]]

_REGISTRY: dict[str, StoreFactory] = {}


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Register (or replace) the backend for ``scheme://`` URIs."""
    _REGISTRY[scheme.lower()] = factory


def _open_file(uri: str, _creds: S3Credentials | None) -> tuple[ObjectStore, str]:
    if uri.startswith("file://"):
        from urllib.parse import unquote

        rest = uri[len("file://") :]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        # file:///abs/path is absolute; file://rel/path is taken relative to the working
        # directory (manifests use it for files next to them; `tidetune run` resolves those
        # against the manifest's folder before they get here)
        path = unquote(rest.split("?", 1)[0].split("#", 1)[0])
        if not path:
            raise StorageError(f"{uri}: a file:// URI needs a path", uri=uri)
    else:
        path = uri
    abs_path = os.path.abspath(os.path.expanduser(path))
    return LocalStore("/", "file:///"), abs_path.lstrip("/")


def pvc_root(env: Mapping[str, str] | None = None) -> Path:
    """Where claims are mounted: ``$TIDETUNE_PVC_ROOT`` or ``/mnt/pvc``."""
    env = os.environ if env is None else env
    return Path(env.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def _open_pvc(uri: str, _creds: S3Credentials | None) -> tuple[ObjectStore, str]:
    parts = urlsplit(uri)
    claim = parts.netloc
    if not claim:
        raise StorageError(f"{uri}: a pvc:// URI needs a claim name: pvc://<claim>/<path>", uri=uri)
    store = LocalStore(pvc_root() / claim, f"pvc://{claim}/")
    return store, _norm_key(parts.path, uri=uri)


def _open_s3(uri: str, creds: S3Credentials | None) -> tuple[ObjectStore, str]:
    parts = urlsplit(uri)
    bucket = parts.netloc
    if not bucket:
        raise StorageError(f"{uri}: an s3:// URI needs a bucket: s3://<bucket>/<key>", uri=uri)
    return S3Store(bucket, creds), _norm_key(parts.path, uri=uri)


register_scheme("file", _open_file)
register_scheme("pvc", _open_pvc)
register_scheme("s3", _open_s3)


def scheme_of(uri: str) -> str:
    """The URI's scheme, lower case; ``file`` for plain paths."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep else "file"


def open_store(uri: str, credentials: S3Credentials | None = None) -> tuple[ObjectStore, str]:
    """Resolve ``uri`` to ``(store, key)``.

    Supports ``file://``, plain paths, ``pvc://`` and ``s3://`` plus registered schemes.
    ``credentials`` apply to ``s3://`` (default: ``S3Credentials.from_env()``).
    Raises ``StorageError`` for an unsupported scheme or a malformed URI.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise StorageError("empty storage URI; use file://, pvc://claim/path or s3://bucket/key")
    uri = uri.strip()
    scheme = scheme_of(uri)
    factory = _REGISTRY.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in sorted(_REGISTRY))
        raise StorageError(
            f"{uri}: unsupported storage scheme {scheme + '://'!r}; supported: {known}", uri=uri
        )
    return factory(uri, credentials)


def read_bytes(uri: str, credentials: S3Credentials | None = None) -> bytes:
    """Read the object at ``uri``."""
    store, key = open_store(uri, credentials)
    return store.read_bytes(key)


def write_bytes(uri: str, data: bytes, credentials: S3Credentials | None = None) -> None:
    """Write ``data`` to ``uri`` (atomically for local paths)."""
    store, key = open_store(uri, credentials)
    store.write_bytes(key, data)


def exists(uri: str, credentials: S3Credentials | None = None) -> bool:
    """Whether ``uri`` names an existing object."""
    store, key = open_store(uri, credentials)
    return store.exists(key)


def delete(uri: str, credentials: S3Credentials | None = None) -> int:
    """Delete the object ``uri`` and everything under it; return the count."""
    store, key = open_store(uri, credentials)
    return store.delete(key)

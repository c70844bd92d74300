"""``tidetune.storage``: the same tests against file:// and a real S3 server (moto, minio)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.s3 import S3Endpoint, start_s3
from tidetune import storage
from tidetune.storage import LocalStore, S3Credentials, S3Store, StorageError, open_store


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with start_s3("tidetune-test") as ep:
        yield ep


@dataclass
class Backend:
    root: str  # a URI prefix unique to the test
    creds: S3Credentials | None


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return Backend(f"file://{tmp_path}/store", None)
    ep: S3Endpoint = request.getfixturevalue("s3")
    creds = S3Credentials(endpoint=ep.endpoint, access_key=ep.access_key, secret_key=ep.secret_key)
    return Backend(f"s3://{ep.bucket}/{tmp_path.name}", creds)


def _open(b: Backend, sub: str = "") -> tuple[storage.ObjectStore, str]:
    return open_store(f"{b.root}/{sub}" if sub else b.root, b.creds)


def test_write_read_exists_size(backend: Backend) -> None:
    store, key = _open(backend, "a/b/c.json")
    assert not store.exists(key)
    store.write_bytes(key, b'{"x": 1}')
    assert store.exists(key)
    assert store.read_bytes(key) == b'{"x": 1}'
    assert store.size(key) == 8
    store.write_text(key, "überschrieben")
    assert store.read_text(key) == "überschrieben"
    assert store.uri(key) == f"{backend.root}/a/b/c.json"
    # a prefix is not an object
    parent = store.join(key.rsplit("/", 2)[0])
    assert not store.exists(parent)


def test_list_is_sorted_recursive_and_segment_aware(backend: Backend) -> None:
    store, base = _open(backend)
    for k in [
        "ckpt/step-10/w.bin",
        "ckpt/step-1/z.bin",
        "ckpt/step-1/a/b.bin",
        "ckpt/step-2",
        "other.txt",
    ]:
        store.write_bytes(store.join(base, k), b"x")
    rel = [k[len(base) + 1 :] for k in store.list(store.join(base, "ckpt/step-1"))]
    assert rel == ["ckpt/step-1/a/b.bin", "ckpt/step-1/z.bin"]
    everything = [k[len(base) + 1 :] for k in store.list(base)]
    assert (
        everything
        == sorted(everything)
        == [
            "ckpt/step-1/a/b.bin",
            "ckpt/step-1/z.bin",
            "ckpt/step-10/w.bin",
            "ckpt/step-2",
            "other.txt",
        ]
    )
    # an object named exactly by the prefix is listed
    assert store.list(store.join(base, "ckpt/step-2")) == [store.join(base, "ckpt/step-2")]
    assert store.list(store.join(base, "missing")) == []


def test_delete_prefix(backend: Backend) -> None:
    store, base = _open(backend)
    for k in ["ck/step-1/a", "ck/step-1/b/c", "ck/step-10/a", "ck/step-2"]:
        store.write_bytes(store.join(base, k), b"x")
    assert store.delete(store.join(base, "ck/step-1")) == 2
    assert [k[len(base) + 1 :] for k in store.list(base)] == ["ck/step-10/a", "ck/step-2"]
    assert store.delete(store.join(base, "ck/step-2")) == 1
    assert store.delete(store.join(base, "nothing")) == 0
    with pytest.raises(StorageError, match="refusing to delete the whole"):
        store.delete("")


def test_upload_download_big_file_and_dirs(backend: Backend, tmp_path: Path) -> None:
    store, base = _open(backend)
    if isinstance(store, S3Store):
        store.part_size = 5 * 1024 * 1024  # force a multipart upload (S3's minimum part)
    big = tmp_path / "big.bin"
    payload = os.urandom(1024 * 1024) * 11 + b"tail"
    big.write_bytes(payload)
    key = store.join(base, "models/big.bin")
    store.upload_file(big, key)
    assert store.size(key) == len(payload)
    out = tmp_path / "dl" / "big.bin"
    store.download_file(key, out)
    assert out.read_bytes() == payload
    assert not [p for p in out.parent.iterdir() if p.name != "big.bin"], "no temp files left"

    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.safetensors").write_bytes(b"w" * 100)
    keys = store.upload_dir(src, store.join(base, "exported"))
    assert [k[len(base) + 1 :] for k in keys] == [
        "exported/config.json",
        "exported/sub/w.safetensors",
    ]
    got = store.download_dir(store.join(base, "exported"), tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in got) == [
        "config.json",
        "sub/w.safetensors",
    ]
    assert (tmp_path / "back" / "sub" / "w.safetensors").read_bytes() == b"w" * 100


def test_missing_object_errors_name_the_uri(backend: Backend, tmp_path: Path) -> None:
    store, base = _open(backend)
    key = store.join(base, "nope.jsonl")
    for call in (
        lambda: store.read_bytes(key),
        lambda: store.size(key),
        lambda: store.download_file(key, tmp_path / "x"),
    ):
        with pytest.raises(StorageError) as ei:
            call()
        assert f"{backend.root}/nope.jsonl" in str(ei.value)
        assert ei.value.uri == f"{backend.root}/nope.jsonl"
    assert not (tmp_path / "x").exists()


def test_module_level_helpers(backend: Backend) -> None:
    uri = f"{backend.root}/helpers/x.txt"
    storage.write_bytes(uri, b"hello", backend.creds)
    assert storage.exists(uri, backend.creds)
    assert storage.read_bytes(uri, backend.creds) == b"hello"
    assert storage.delete(f"{backend.root}/helpers", backend.creds) == 1
    assert not storage.exists(uri, backend.creds)


def test_dotdot_keys_are_refused(backend: Backend) -> None:
    store, base = _open(backend)
    with pytest.raises(StorageError, match=r"'\.\.' is not allowed"):
        store.write_bytes(store.join(base, "../escape"), b"x")


# ---------------------------------------------------------------- file:// specifics


def test_plain_paths_and_file_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store, key = open_store("rel/data.jsonl")
    assert isinstance(store, LocalStore)
    store.write_bytes(key, b"1")
    assert (tmp_path / "rel" / "data.jsonl").read_bytes() == b"1"
    assert open_store(f"file://{tmp_path}/rel/data.jsonl")[1] == key
    assert storage.read_bytes(str(tmp_path / "rel" / "data.jsonl")) == b"1"
    assert open_store("file://rel/data.jsonl")[1] == key  # relative to the working directory
    assert open_store("file://localhost/x/y")[1] == "x/y"
    with pytest.raises(StorageError, match="needs a path"):
        open_store("file://")


def test_local_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, key = open_store(str(tmp_path / "progress.json"))
    store.write_bytes(key, b"old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(
        StorageError, match=r"progress\.json: cannot write: No space left on device"
    ):
        store.write_bytes(key, b"new")
    assert (tmp_path / "progress.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_pvc_resolves_under_the_mount_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDETUNE_PVC_ROOT", str(tmp_path))
    store, key = open_store("pvc://datasets/team-a/poems.jsonl")
    assert isinstance(store, LocalStore)
    store.write_bytes(key, b"x")
    assert (tmp_path / "datasets" / "team-a" / "poems.jsonl").read_bytes() == b"x"
    assert store.uri(key) == "pvc://datasets/team-a/poems.jsonl"
    assert store.list("team-a") == ["team-a/poems.jsonl"]
    monkeypatch.delenv("TIDETUNE_PVC_ROOT")
    assert storage.pvc_root() == Path("/mnt/pvc")
    with pytest.raises(StorageError, match="needs a claim name"):
        open_store("pvc:///x")
    with pytest.raises(
        StorageError, match=r"check the path \(and for pvc:// that the claim is mounted\)"
    ):
        open_store("pvc://missing/file")[0].read_bytes("file")


def test_unknown_scheme_and_registry(tmp_path: Path) -> None:
    with pytest.raises(
        StorageError, match=r"unsupported storage scheme 'gs://'; supported: file://, pvc://, s3://"
    ):
        open_store("gs://bucket/x")
    with pytest.raises(StorageError, match="empty storage URI"):
        open_store("  ")
    storage.register_scheme("mem", lambda uri, creds: (LocalStore(tmp_path, "mem://"), uri[6:]))
    try:
        store, key = open_store("mem://a/b")
        store.write_bytes(key, b"z")
        assert (tmp_path / "a" / "b").read_bytes() == b"z"
    finally:
        storage._REGISTRY.pop("mem")


# ---------------------------------------------------------------- s3 specifics


def test_credentials_from_env_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "TIDETUNE_S3_ENDPOINT": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_REGION": "eu-west-1",
    }
    c = S3Credentials.from_env(env)
    assert (c.endpoint, c.access_key, c.secret_key, c.region) == (
        "http://127.0.0.1:9000",
        "AKIDEXAMPLE",
        "s3cr3t-value",
        "eu-west-1",
    )
    assert "s3cr3t" not in repr(c) and "AKIDEXAMPLE" not in repr(c)
    assert "s3cr3t" not in repr(S3Store("b", c))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store, key = open_store("s3://bucket/some/key")
    assert isinstance(store, S3Store) and store.credentials == c and key == "some/key"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://127.0.0.1:9000", ("127.0.0.1:9000", False)),
        ("https://s3.example.com", ("s3.example.com", True)),
        ("minio.storage:9000", ("minio.storage:9000", True)),
        ("localhost:9000", ("localhost:9000", False)),
        ("127.0.0.1:9000", ("127.0.0.1:9000", False)),
        ("[::1]:9000", ("[::1]:9000", False)),
    ],
)
def test_endpoint_forms(endpoint: str, expected: tuple[str, bool]) -> None:
    assert S3Credentials(endpoint=endpoint).host_and_secure() == expected
    with pytest.raises(StorageError, match="has a path"):
        S3Credentials(endpoint="http://h:1/x").host_and_secure()


def test_missing_bucket_and_wrong_keys_messages(s3: S3Endpoint) -> None:
    creds = S3Credentials(
        endpoint=s3.endpoint, access_key=s3.access_key, secret_key="TOPSECRET-123"
    )
    with pytest.raises(StorageError) as ei:
        storage.write_bytes("s3://no-such-bucket/x", b"1", creds)
    msg = str(ei.value)
    assert "s3://no-such-bucket/x" in msg and "does not exist" in msg
    assert "TOPSECRET" not in msg


def test_unreachable_endpoint_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = S3Credentials(
        endpoint=f"http://127.0.0.1:{port}", access_key="a", secret_key="SECRETKEY"
    )
    with pytest.raises(StorageError) as ei:
        storage.read_bytes("s3://b/k.jsonl", creds)
    msg = str(ei.value)
    assert f"s3://b/k.jsonl: cannot read: S3 endpoint http://127.0.0.1:{port} unreachable" in msg
    assert "TIDETUNE_S3_ENDPOINT" in msg and "SECRETKEY" not in msg

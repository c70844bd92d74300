"""Container images in the lab: what the node agent runs for each image name.

There is no container runtime, so an image is mapped to this machine's environment: the
project's Dockerfiles give each image its entrypoint, command, user and working directory
(read from the Dockerfile itself, so the lab runs what the image would), and the repository's
venv stands in for the image's installed packages (also for the reward runtime image
``examples/ppo.yaml`` names: the trainer image plus sympy), with this tree's code first
(:func:`image_python`). ``alpine``/``busybox`` images (the
training operator's ``init-pytorch`` container) get Debian's static busybox applets. Any other
image is unknown to the node agent: its pods stay Pending with ``ErrImagePull``, as a kubelet
that cannot pull an image leaves them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import sys
import sysconfig
from typing import Any

__all__ = ["image_table"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

OPERATOR_IMAGES = ("ghcr.io/tidetune/operator", "tidetune/operator")
TRAINER_IMAGES = ("ghcr.io/tidetune/trainer", "tidetune/trainer", "tidetune-trainer")
#: reward runtime images the examples name (``rl.rewardRuntime.image``): built FROM the
#: trainer image with the functions' requirements, which the repository's venv has (sympy)
REWARD_RUNTIME_IMAGES = ("registry.example.com/team-a/reward-runtime",)
BUSYBOX_IMAGES = (
    "alpine",
    "docker.io/alpine",
    "docker.io/library/alpine",
    "busybox",
    "docker.io/library/busybox",
)


def _dockerfile_final_stage(path: pathlib.Path) -> dict[str, Any]:
    """ENTRYPOINT, CMD, USER and WORKDIR of the last stage (exec form only)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("FROM "):
            found = {}
            continue
        match = re.match(r"(ENTRYPOINT|CMD|USER|WORKDIR)\s+(.*)", line, re.IGNORECASE)
        if match is None:
            continue
        key, value = match.group(1).upper(), match.group(2).strip()
        if key in ("ENTRYPOINT", "CMD"):
            if not value.startswith("["):
                raise ValueError(f"{path}: {key} must use the exec form (a JSON array)")
            found[key] = json.loads(value)
        else:
            found[key] = value
    return found


#: the images' interpreter (see :func:`image_python`); ignored by git
IMAGE_PYTHON = REPO_ROOT / ".lab" / "python"


def _tree_paths() -> list[str]:
    return [str(REPO_ROOT / "operator"), str(REPO_ROOT / "trainer-image"), str(REPO_ROOT)]


def _replace(path: pathlib.Path, write: Any) -> None:
    """Write ``path`` by a temporary sibling and a rename (labs may start side by side)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    write(tmp)
    os.replace(tmp, path)


def image_python(venv_bin: pathlib.Path, where: pathlib.Path = IMAGE_PYTHON) -> pathlib.Path:
    """A venv for the images' ``python``: the repository venv's packages, but this tree's
    code first — also for ``python -I`` (the reward runtime's command), which ignores
    ``PYTHONPATH`` and would otherwise import the project from wherever the venv's
    editable install points (the main checkout, when the lab runs from a worktree).

    ``where/bin/python`` is the venv's base interpreter; a ``.pth`` in ``where``'s
    site-packages lists the tree's folders, then adds the venv's site-packages as a site
    folder (its own ``.pth`` files run as in the venv: the editable install's finder
    comes after the path, so the tree's folders win). Returns its ``bin`` folder."""
    cfg = (venv_bin.parent / "pyvenv.cfg").read_text()
    real = pathlib.Path(os.path.realpath(venv_bin / "python"))
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = where / "lib" / version / "site-packages"
    for d in (where / "bin", site_packages):
        d.mkdir(parents=True, exist_ok=True)
    for d in (where.parent, where, *where.rglob("*")):
        if d.is_dir():
            d.chmod(0o755)  # the pods' users run it
    _replace(where / "pyvenv.cfg", lambda t: t.write_text(cfg))
    for name in ("python", "python3", version):
        _replace(where / "bin" / name, lambda t: t.symlink_to(real))
    venv_site = sysconfig.get_path("purelib")
    pth = "".join(f"{p}\n" for p in _tree_paths())
    pth += f"import site; site.addsitedir({venv_site!r})\n"
    _replace(site_packages / "_tidetune_lab.pth", lambda t: t.write_text(pth))
    for f in (where / "pyvenv.cfg", site_packages / "_tidetune_lab.pth"):
        f.chmod(0o644)
    return where / "bin"


def _python_env(venv_bin: pathlib.Path, python_bin: pathlib.Path) -> dict[str, str]:
    return {
        "PATH": f"{python_bin}:{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": ":".join(_tree_paths()),
        "PYTHONUNBUFFERED": "1",
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def image_table(busybox_dir: pathlib.Path) -> list[dict[str, Any]]:
    """The node agent's ``images`` setting (see the module doc)."""
    venv_bin = pathlib.Path(sys.executable).parent
    python_bin = image_python(venv_bin)
    table: list[dict[str, Any]] = []
    for prefixes, dockerfile in (
        (OPERATOR_IMAGES, "Dockerfile.operator"),
        (TRAINER_IMAGES + REWARD_RUNTIME_IMAGES, "Dockerfile.trainer"),
    ):
        stage = _dockerfile_final_stage(REPO_ROOT / dockerfile)
        for prefix in prefixes:
            table.append(
                {
                    "prefix": prefix,
                    "entrypoint": stage.get("ENTRYPOINT", []),
                    "cmd": stage.get("CMD", []),
                    "workingDir": stage.get("WORKDIR", "/"),
                    "user": stage.get("USER", "0"),
                    "env": _python_env(venv_bin, python_bin),
                }
            )
    for prefix in BUSYBOX_IMAGES:
        table.append(
            {
                "prefix": prefix,
                "entrypoint": [],
                "cmd": ["sh"],
                "workingDir": "/",
                "user": "0",
                "env": {"PATH": str(busybox_dir), "HOME": "/root"},
            }
        )
    return table

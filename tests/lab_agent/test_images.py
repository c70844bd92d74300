"""The lab's image table: which local environment each image name runs."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.lab import images
from tests.lab.nodeagent.spec import ImageConfig, resolve_image

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_image_python_imports_this_trees_code_even_isolated(tmp_path: pathlib.Path) -> None:
    """``python -I`` (the reward runtime's command) ignores PYTHONPATH: the images'
    interpreter still imports the project from this tree, and the venv's packages."""
    venv_bin = pathlib.Path(sys.executable).parent
    bin_dir = images.image_python(venv_bin, tmp_path / "python")
    code = (
        "import sys, tidetune_trainer, tidetune_operator, yaml; "
        "print(tidetune_trainer.__file__); print(tidetune_operator.__file__); print(sys.prefix)"
    )
    out = subprocess.run(
        [str(bin_dir / "python"), "-I", "-c", code],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == str(REPO_ROOT / "trainer-image" / "tidetune_trainer" / "__init__.py")
    assert out[1] == str(REPO_ROOT / "operator" / "tidetune_operator" / "__init__.py")
    assert out[2] == str(tmp_path / "python")
    # the venv's own .pth files ran as in the venv (setuptools' distutils shim, the
    # editable install's finder — after the path, so the tree wins)
    finders = "import sys; print([getattr(f, '__name__', type(f).__name__) for f in sys.meta_path])"
    seen = [
        subprocess.run(
            [python, "-I", "-c", finders], cwd="/", capture_output=True, text=True, check=True
        ).stdout
        for python in (str(bin_dir / "python"), sys.executable)
    ]
    assert seen[0] == seen[1]
    # made again (another lab from the same tree): the same, no error
    assert images.image_python(venv_bin, tmp_path / "python") == bin_dir


def test_the_ppo_examples_reward_runtime_image_runs_the_trainer_image() -> None:
    table = [
        ImageConfig.from_dict(raw, f"images[{i}]")
        for i, raw in enumerate(images.image_table(pathlib.Path("/nonexistent")))
    ]
    trainer = resolve_image(table, "ghcr.io/tidetune/trainer:lab")
    runtime = resolve_image(table, "registry.example.com/team-a/reward-runtime:1")
    assert runtime.entrypoint == trainer.entrypoint and runtime.user == trainer.user
    assert runtime.env["PATH"].split(":")[0] == str(images.IMAGE_PYTHON / "bin")

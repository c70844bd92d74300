"""The CRDs: generated from the model, structural, valid, and in agreement with the model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tests.support.apiserver import ApiServer
from tests.tidetune.cases import BAD, DELETE, GOOD, PYDANTIC_ONLY, ROOT, edit, example
from tidetune.api import FineTuneJob, IdlePool
from tidetune.cli import main
from tidetune.crdgen import finetunejob_crd, idlepool_crd, render_all

CRDS = {"FineTuneJob": finetunejob_crd(), "IdlePool": idlepool_crd()}
MODELS: dict[str, type[FineTuneJob] | type[IdlePool]] = {
    "FineTuneJob": FineTuneJob,
    "IdlePool": IdlePool,
}


def test_crds_in_repo_match_the_models() -> None:
    """Fails when crds/ drifted: run `tidetune crds --write crds` and commit."""
    for name, text in render_all().items():
        on_disk = (ROOT / "crds" / name).read_text(encoding="utf-8")
        assert on_disk == text, (
            f"crds/{name} drifted from the models; run `tidetune crds --write crds`"
        )
    assert main(["crds", "--check", str(ROOT / "crds")]) == 0


def test_crds_check_detects_drift(tmp_path: Path) -> None:
    assert main(["crds", "--write", str(tmp_path)]) == 0
    (tmp_path / "idlepool.yaml").write_text("changed\n")
    assert main(["crds", "--check", str(tmp_path)]) == 1


def test_crds_command_prints_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["spec"]["names"]["kind"] for d in docs} == {"FineTuneJob", "IdlePool"}


def test_kubernetes_validate_strict() -> None:
    files = [str(p) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    exe = Path(sys.executable).with_name("kubernetes-validate")
    res = subprocess.run(
        [exe, "--strict", "--kubernetes-version", "1.33", *files],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "INFO" in res.stdout or "valid" in res.stdout.lower(), res.stdout


def _walk(node: Any, path: str = "") -> Any:
    yield path, node
    if isinstance(node, dict):
        for key in ("properties",):
            for name, child in node.get(key, {}).items():
                yield from _walk(child, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}.*")
        if "items" in node:
            yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ["FineTuneJob", "IdlePool"])
def test_schema_is_structural(kind: str) -> None:
    schema = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "$defs" not in text
    for path, node in _walk(schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf is not structural"
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties false"
        assert "uniqueItems" not in node and "oneOf" not in node and "title" not in node
        if path.startswith(".spec") and node.get("type") not in ("object", None):
            assert node.get("description") or path.endswith("[]") or path.endswith(".*"), (
                f"{path} has no description (kubectl explain shows it)"
            )


def test_finetunejob_crd_shape() -> None:
    crd = CRDS["FineTuneJob"]["spec"]
    assert crd["names"]["shortNames"] == ["ftj"]
    assert crd["names"]["categories"] == ["tidetune"]
    assert crd["scope"] == "Namespaced"
    version = crd["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Loss", "Pool", "Age"]
    assert CRDS["IdlePool"]["spec"]["scope"] == "Cluster"


def _verdicts(apiserver: ApiServer, kind: str, doc: dict[str, Any]) -> tuple[bool, list[str]]:
    try:
        MODELS[kind].model_validate(doc)
        model_ok = True
    except ValidationError:
        model_ok = False
    return model_ok, apiserver.verdict(doc)


# apiVersion is matched by the API server's routing ("no matches for kind"), not the schema.
SCHEMA_BAD = [c for c in BAD if c[3] != "apiVersion"]


@pytest.mark.parametrize(
    ("case", "base", "edits", "path"), SCHEMA_BAD, ids=[c[0] for c in SCHEMA_BAD]
)
def test_crd_rejects_what_the_model_rejects(
    apiserver: ApiServer, case: str, base: str, edits: dict[str, Any], path: str
) -> None:
    kind = "IdlePool" if base == "idlepool.yaml" else "FineTuneJob"
    doc = edit(example(base, kind), edits)
    model_ok, server = _verdicts(apiserver, kind, doc)
    assert not model_ok
    if case in PYDANTIC_ONLY:
        assert server == [], "the CRD now judges this case: remove it from PYDANTIC_ONLY"
    else:
        assert server, f"the API server would accept {case} but the model rejects it"


@pytest.mark.parametrize(("case", "base", "edits"), GOOD, ids=[c[0] for c in GOOD])
def test_crd_accepts_what_the_model_accepts(
    apiserver: ApiServer, case: str, base: str, edits: dict[str, Any]
) -> None:
    kind = "IdlePool" if base == "idlepool.yaml" else "FineTuneJob"
    doc = example(base, kind)
    doc = (
        {**doc, "spec": edits["spec"]} if isinstance(edits.get("spec"), dict) else edit(doc, edits)
    )
    model_ok, server = _verdicts(apiserver, kind, doc)
    assert model_ok
    assert server == [], server


def _started(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "status": {"phase": "Running", "startTime": "2026-11-22T01:00:00Z"}}


@pytest.mark.parametrize(
    ("edits", "allowed"),
    [
        ({"spec.suspend": True}, True),
        ({"spec.cancelled": True}, True),
        ({"spec.scheduling.priority": 99}, True),
        ({"spec.scheduling.maxRuntime": "48h"}, True),
        ({"spec.hyperparameters.learningRate": 0.5}, False),
        (
            {"spec.method": "cpt", "spec.data.train.format": "text", "spec.data.mixIn": DELETE},
            False,
        ),
        ({"spec.scheduling.pool": "other-pool"}, False),
        ({"spec.scheduling.queueName": "q"}, False),
        ({"spec.storageSecretRef": DELETE}, False),
        ({"spec.displayName": "renamed"}, False),
    ],
)
def test_spec_is_immutable_once_started(
    apiserver: ApiServer, edits: dict[str, Any], allowed: bool
) -> None:
    old = _started(example("sft-lora.yaml"))
    new = _started(edit(example("sft-lora.yaml"), edits))
    problems = apiserver.verdict(new, old)
    assert (problems == []) is allowed, problems
    if not allowed:
        assert any("cannot change once the job has started" in p for p in problems)
    # before the job starts, everything may change
    queued = {**example("sft-lora.yaml"), "status": {"phase": "Queued"}}
    assert apiserver.verdict(edit(example("sft-lora.yaml"), edits), queued) == []


def test_a_cancelled_job_stays_cancelled(apiserver: ApiServer) -> None:
    old = _started(edit(example("sft-lora.yaml"), {"spec.cancelled": True}))
    for new in (
        _started(edit(example("sft-lora.yaml"), {"spec.cancelled": False})),
        _started(example("sft-lora.yaml")),  # the field removed
    ):
        problems = apiserver.verdict(new, old)
        assert any("a cancelled job stays cancelled" in p for p in problems), problems
    assert apiserver.verdict(old, old) == []
    # creating a job that is cancelled from the start is allowed (transition rules skip it)
    assert apiserver.verdict(edit(example("sft-lora.yaml"), {"spec.cancelled": True})) == []


def test_the_server_installs_the_chart_crds_and_explains_them(apiserver: ApiServer) -> None:
    """The chart's copies are byte-identical to crds/ (drift test) and the server serves
    their documentation: what `kubectl explain ftj.spec` shows a user."""
    out = apiserver.kubectl("explain", "ftj.spec").stdout
    assert "FIELDS:" in out and "method" in out and "hyperparameters" in out
    out = apiserver.kubectl("explain", "idlepool.spec.windows").stdout
    assert "start" in out and "pool time zone" in out


def test_the_server_refuses_a_spec_edit_after_start_with_the_crd_message(
    apiserver: ApiServer,
) -> None:
    """Through kubectl, as a user meets it: the CEL transition rule, not our operator."""
    doc = example("sft-lora.yaml")
    doc["metadata"] = {"name": "edit-after-start", "namespace": "default"}
    apiserver.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    apiserver.kubectl(
        "patch",
        "ftj",
        "edit-after-start",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Running", "startTime": "2026-11-22T01:00:00Z"}}',
    )
    doc["spec"]["hyperparameters"]["learningRate"] = 0.5
    result = apiserver.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert result.returncode != 0
    assert "spec.hyperparameters cannot change once the job has started" in result.stderr

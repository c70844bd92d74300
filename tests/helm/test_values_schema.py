"""values.schema.json rejects bad values, and values, schema and operator settings agree."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART, RELEASE, helm, write_values
from tidetune_operator.config import OPERATOR_TRAINER_ENV, OperatorConfig

SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))

#: Operator settings the chart does not expose as values.config, and why.
NOT_IN_VALUES = {
    "namespaces": "rendered from the top-level value `namespaces` (it also drives kopf and RBAC)",
    "clockOffsetSeconds": "a test facility of the lab, never for a real install",
}


#: Operator settings values.schema.json does not accept under ``config``, and why. The schema
#: accepts ``clockOffsetSeconds`` (a lab may set it) although values.yaml does not show it.
NOT_IN_SCHEMA = {
    "namespaces": "rendered from the top-level value `namespaces`",
}


def _aliases() -> set[str]:
    return {f.alias or name for name, f in OperatorConfig.model_fields.items()}


def test_values_config_covers_every_operator_setting() -> None:
    assert set(VALUES["config"]) == _aliases() - set(NOT_IN_VALUES)
    assert set(NOT_IN_VALUES) <= _aliases()


def test_schema_config_matches_the_operator_settings() -> None:
    config = SCHEMA["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == _aliases() - set(NOT_IN_SCHEMA)
    assert set(NOT_IN_SCHEMA) <= set(NOT_IN_VALUES)
    # what the schema takes but values.yaml does not show: the test facility, nothing else
    assert set(config["properties"]) - set(VALUES["config"]) == {"clockOffsetSeconds"}


def test_schema_covers_every_value_and_forbids_unknown_keys() -> None:
    def walk(schema: dict[str, Any], value: Any, path: str) -> None:
        assert "type" in schema, f"{path}: no type in values.schema.json"
        if isinstance(value, dict) and "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path}: unknown keys allowed"
            for key, sub in value.items():
                assert key in schema["properties"], f"{path}.{key}: not in values.schema.json"
                walk(schema["properties"][key], sub, f"{path}.{key}")

    walk(SCHEMA, VALUES, "values")
    assert set(SCHEMA["properties"]) - set(VALUES) == {"global"}


def test_schema_refuses_the_trainer_env_names_the_operator_refuses() -> None:
    """helm install fails where the operator would refuse to start (config.trainerEnv)."""
    names = SCHEMA["properties"]["config"]["properties"]["trainerEnv"]["propertyNames"]
    assert names["not"]["enum"] == sorted(OPERATOR_TRAINER_ENV)


def test_defaults_match_the_operator_defaults() -> None:
    config = dict(VALUES["config"])
    config.pop("defaultOutputUri")  # "" in values means: not set (None)
    assert OperatorConfig.model_validate(config) == OperatorConfig()


BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"config": {"workers": "many"}}, "/config/workers"),
    ({"config": {"workers": 0}}, "/config/workers"),
    ({"config": {"launcher": "MPIJob"}}, "/config/launcher"),
    ({"config": {"terminationGraceSeconds": 5}}, "/config/terminationGraceSeconds"),
    ({"config": {"wrkers": 4}}, "wrkers"),
    ({"namespaces": "team-a"}, "/namespaces"),
    ({"namespaces": ["Team_A"]}, "/namespaces/0"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "/metrics/serviceMonitor/enabled"),
    ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "interval"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"replicas": 2}, "replicas"),
    ({"config": {"clockOffsetSeconds": "1h"}}, "/config/clockOffsetSeconds"),
    ({"config": {"trainerEnv": {"NCCL_DEBUG": 1}}}, "/config/trainerEnv/NCCL_DEBUG"),
    ({"config": {"trainerEnv": {"1ST": "x"}}}, "invalid propertyName '1ST'"),
    ({"config": {"trainerEnv": {"HOME": "/x"}}}, "invalid propertyName 'HOME'"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_bad_values_are_rejected_by_template_and_lint(
    values: dict[str, Any], where: str, tmp_path: pathlib.Path
) -> None:
    path = write_values(tmp_path / "bad.yaml", values)
    res = helm("template", RELEASE, str(CHART), "--values", str(path), check=False)
    assert res.returncode != 0, f"helm template accepted {values}"
    assert "schema" in res.stderr and where in res.stderr, res.stderr
    lint = helm("lint", "--strict", str(CHART), "--values", str(path), check=False)
    assert lint.returncode != 0 and where in lint.stdout + lint.stderr


def test_service_monitor_without_service_fails_with_a_message(tmp_path: pathlib.Path) -> None:
    path = write_values(
        tmp_path / "v.yaml",
        {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
    )
    res = helm("template", RELEASE, str(CHART), "--values", str(path), check=False)
    assert res.returncode != 0 and "metrics.service.enabled" in res.stderr

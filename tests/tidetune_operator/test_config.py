"""The operator's configuration: ``trainerEnv`` and how bad settings are reported."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from tidetune_operator.config import (
    CONFIG_ENV,
    OPERATOR_TRAINER_ENV,
    ConfigError,
    OperatorConfig,
    load_config,
)


def _load(tmp_path: pathlib.Path, settings: dict[str, object]) -> OperatorConfig:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return load_config({CONFIG_ENV: str(path)})


def test_trainer_env_is_read_from_the_config_file(tmp_path: pathlib.Path) -> None:
    config = _load(
        tmp_path, {"trainerEnv": {"NCCL_DEBUG": "WARN", "HF_ENDPOINT": "https://hf.example"}}
    )
    assert config.trainer_env == {"NCCL_DEBUG": "WARN", "HF_ENDPOINT": "https://hf.example"}
    assert OperatorConfig().trainer_env == {}
    assert _load(tmp_path, {"trainerEnv": {}}).trainer_env == {}


@pytest.mark.parametrize("name", sorted(OPERATOR_TRAINER_ENV))
def test_trainer_env_may_not_set_what_the_operator_sets(tmp_path: pathlib.Path, name: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, {"trainerEnv": {"NCCL_DEBUG": "WARN", name: "x"}})
    text = str(err.value)
    assert "trainerEnv" in text and f"{name} is set by the operator itself" in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"1ST": "x"}, "'1ST' is not an environment variable name"),
        ({"A=B": "x"}, "'A=B' is not an environment variable name"),
        ({"": "x"}, "'' is not an environment variable name"),
        ({"WORKERS": 4}, "trainerEnv.WORKERS: Input should be a valid string"),
        ({"WORKERS": None}, "trainerEnv.WORKERS: Input should be a valid string"),
        (["NCCL_DEBUG=WARN"], "trainerEnv: Input should be a valid dictionary"),
    ],
)
def test_bad_trainer_env_names_the_setting(
    tmp_path: pathlib.Path, env: object, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, {"trainerEnv": env})
    assert expected in str(err.value), str(err.value)

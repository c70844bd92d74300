"""CEL rules (``x-kubernetes-validations``) attached to models, and the error that mirrors them.

A cross-field rule is written twice on purpose, side by side in the model: once in Python
(a ``model_validator`` calling :func:`fail`) and once in CEL (:func:`rule`) for the API
server. The table tests in ``tests/tidetune/api`` run every case through both and fail
when they disagree.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic_core import PydanticCustomError

CROSS_FIELD_ERROR = "cross_field"


def rule(cel: str, message: str, field_path: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry. ``field_path`` is relative, e.g. ``.lora``."""
    entry: dict[str, Any] = {"rule": cel, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """``json_schema_extra`` for a model whose CRD schema carries these rules."""
    return {"x-kubernetes-validations": list(rules)}


def fail(field: str, message: str) -> NoReturn:
    """Raise a cross-field error about ``field`` (camelCase, relative to the model).

    The CLI joins the model's location and ``field`` into the path it prints.
    """
    raise PydanticCustomError(CROSS_FIELD_ERROR, message, {"field": field})

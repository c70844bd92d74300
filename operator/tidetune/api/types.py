"""Reusable field types: each one a pydantic validator and a CRD schema that agree.

Every pattern here is written once and used twice: by pydantic (Python ``re``) and in
the generated CRD (the API server's RE2). Patterns stay within the syntax both share,
except :data:`DISPLAY_NAME_PATTERN`, whose Unicode classes RE2 has and Python's ``re``
lacks; pydantic checks that one with :mod:`unicodedata` instead.
"""

from __future__ import annotations

import re
import unicodedata
import zoneinfo
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic import BaseModel as _PydanticBaseModel
from pydantic.alias_generators import to_camel

DNS1123_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
#: Letters of any script (with their combining marks), digits of any script, '-' and '_'.
DISPLAY_NAME_PATTERN: Final = r"^[\p{L}\p{M}\p{N}_-]{1,200}$"
#: A duration: one or more <number><unit>, units d, h, m, s (e.g. 90m, 24h, 1h30m).
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(d|h|m|s))+$"
#: A Kubernetes resource quantity (the forms users write for cpu and memory).
QUANTITY_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
#: HH:MM on a 24-hour clock; 24:00 is allowed (the end of a day).
CLOCK_PATTERN: Final = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
#: A Python identifier (reward function entry points).
IDENTIFIER_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: A Kubernetes condition reason.
REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(d|h|m|s)")
_UNIT_SECONDS: Final = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


class ApiModel(_PydanticBaseModel):
    """Base of every API object: camelCase on the wire, snake_case in Python, no unknown keys."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=False,
        use_enum_values=False,
        str_strip_whitespace=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        """``key: null`` means the key is not set, as the API server prunes nulls."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    def to_dict(self) -> dict[str, Any]:
        """The object as users write it: camelCase keys, enums as strings, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90m``, ``24h``, ``1h30m`` or ``2d``.

    Raises:
        ValueError: the text is not a duration; the message says what is allowed.
    """
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit d, h, m or s, "
            "e.g. 90m, 24h, 1h30m"
        )
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest duration string for ``seconds`` (``5400`` → ``1h30m``)."""
    whole = round(seconds)
    if whole <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            count, whole = divmod(whole, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)


def clock_minutes(text: str) -> int:
    """Minutes since midnight for ``HH:MM`` (``24:00`` → 1440)."""
    if not re.fullmatch(CLOCK_PATTERN, text):
        raise ValueError(f"{text!r} is not a time of day; write HH:MM from 00:00 to 24:00")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_positive_duration(value: str) -> str:
    if parse_duration(value) <= 0:
        raise ValueError(f"{value!r} is zero; a duration here must be longer than 0s")
    return value


def _check_display_name(value: str) -> str:
    bad = sorted(
        {ch for ch in value if ch not in "-_" and unicodedata.category(ch)[0] not in "LMN"}
    )
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise ValueError(f"contains {shown}; use letters of any script, digits, '-' and '_' only")
    return value


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(
            f"{value!r} is not an IANA time zone; write a name like UTC, Europe/Berlin "
            "or Asia/Shanghai"
        ) from err
    return value


def _quantity_to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # let the string check reject it
    if isinstance(value, int):  # YAML `cpu: 8`; a float is not a quantity the CRD takes
        return str(value)
    return value


Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32),
    AfterValidator(_check_duration),
]
PositiveDuration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32),
    AfterValidator(_check_positive_duration),
]
DisplayName = Annotated[
    str,
    Field(min_length=1, max_length=200),
    AfterValidator(_check_display_name),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": DISPLAY_NAME_PATTERN}
    ),
]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL_PATTERN)]
DnsSubdomain = Annotated[
    str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN_PATTERN)
]
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN, max_length=32),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
Timezone = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_check_timezone)]
# maxLength bounds the CEL cost estimate of the window rules that compare clock times; without
# it the API server assumes the longest possible string and refuses the CRD's rules as too
# expensive.
ClockTime = Annotated[str, Field(pattern=CLOCK_PATTERN, max_length=5)]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN)]

"""Exceptions of the data pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: How many problems a ``DataValidationError`` message lists before "... and N more".
MAX_LISTED = 20


class DataError(Exception):
    """Base class: the data cannot be trained on. The message says what to change."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem in one line of one file (``line`` is 1-based; 0 = the whole file)."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.source}: {self.message}"
        return f"{self.source}:{self.line}: {self.message}"


class DataValidationError(DataError):
    """Some lines of the data are invalid. Lists the first 20 problems and the total."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the data"
        if n > MAX_LISTED:
            head += f" (the first {MAX_LISTED} are listed)"
        lines = [head + "; fix these lines and run again:"]
        lines += [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if n > MAX_LISTED:
            lines.append(f"  ... and {n - MAX_LISTED} more")
        super().__init__("\n".join(lines))

    @property
    def total(self) -> int:
        """The number of problems found."""
        return len(self.problems)


class DataConfigError(DataError):
    """The data settings are inconsistent (a ratio out of range, an unknown format, ...)."""

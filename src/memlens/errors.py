"""Exceptions raised for user errors.

Every error a user can cause by giving memlens bad input is a :class:`MemlensError`. The CLI prints its
``lines()`` (one line per problem), exits with status 1 and shows a traceback only with ``--debug``.
Programming errors (bugs) are ordinary exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MemlensError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "RunDirError",
    "TrainingError",
    "Problem",
    "ValidationError",
    "first_line",
]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty): for one-line
    errors that quote a library's multi-line message."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class MemlensError(Exception):
    """Base class of every error caused by user input (bad data, bad config, bad file)."""

    def lines(self) -> list[str]:
        """The message as a list of lines, one per problem."""
        return [line for line in str(self).splitlines() if line.strip()] or [type(self).__name__]


class DataError(MemlensError):
    """A data set, table or image cannot be used."""


class ConfigError(MemlensError):
    """A configuration value or file is invalid."""


class CheckpointError(MemlensError):
    """A checkpoint file is malformed, foreign, or does not match the model."""


class TrainingError(MemlensError):
    """A training went wrong in a way its settings can fix (e.g. the loss diverged)."""


class RunDirError(MemlensError):
    """A run directory lacks a file that a stage needs."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a data set: where (a path or table row) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class ValidationError(DataError):
    """Several problems found in one pass over a data set; ``problems`` lists them all."""

    def __init__(self, problems: list[Problem], header: str | None = None):
        self.problems = list(problems)
        self.header = header
        text = "\n".join(str(p) for p in self.problems)
        super().__init__(f"{header}\n{text}" if header else text)

    def lines(self) -> list[str]:
        out = [self.header] if self.header else []
        return out + [str(p) for p in self.problems]

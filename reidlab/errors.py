"""Errors in what a user gave reidlab (dataset folders, checkpoints, weights files), each
explained by its message alone: the ``reidlab`` command prints the message, without a
traceback, and exits with code 2. They keep the built-in type they would otherwise be
(``ValueError``, ``OSError``, ``FileNotFoundError``), so ``except ValueError`` still works.
"""

from __future__ import annotations


class ReIDLabError(Exception):
    """Base of reidlab's user-input errors."""


class DatasetFormatError(ReIDLabError, ValueError):
    """A dataset folder or listing does not have the expected layout or content."""


class InputValueError(ReIDLabError, ValueError):
    """A checkpoint, weights file or argument that does not fit what it is used for."""


class InputFileError(ReIDLabError, OSError):
    """A checkpoint or weights file that is missing or cannot be read."""


class MissingFileError(InputFileError, FileNotFoundError):
    """A checkpoint or weights file that does not exist."""

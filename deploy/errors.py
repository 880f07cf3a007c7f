"""The one exception type a user sees.

Every stage raises :class:`EffdeployError` for bad input or a failed step; the CLI turns it into a
single line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations


class EffdeployError(Exception):
    """A user-facing failure: the message says what is wrong and what to do."""

    exit_code = 2


class ParityError(EffdeployError):
    """A built artifact missed its accuracy budget (the report is kept beside it)."""

    exit_code = 3


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an exception's message (or of a logged string), for one-line errors.

    Third-party errors (ONNX, ONNX Runtime, TensorRT, CUDA) carry multi-line messages and stack
    dumps; a user sees their first line. An empty message gives the exception's type name.
    """
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    line = text.splitlines()[0]
    return line if limit is None else line[:limit]

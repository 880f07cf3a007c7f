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

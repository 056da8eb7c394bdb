"""User-facing errors: one line saying what is wrong and what to do."""

from __future__ import annotations


class QtkError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``qtk: error: <message>`` and exits with status 2, without a traceback.
    The message must name the offending thing (file, key, path) and say how to fix it.
    """

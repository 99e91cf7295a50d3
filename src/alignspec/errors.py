"""Errors a user can cause.

Everything the user can get wrong (a bad path, a bad option, a prompt that does not fit) raises
:class:`AlignspecError` with one sentence that says what is wrong and how to fix it. The CLI and
the server turn it into a one-line message instead of a traceback; anything else that escapes is
a bug in alignspec.
"""

from __future__ import annotations


class AlignspecError(Exception):
    """A user-caused error whose message is one sentence meant for the user."""

"""Deterministic crash points for tests: die at a named place in the send path, once.

Set DISPATCH_CRASH_AT to one of CRASH_POINTS; the process that reaches that point exits at once (like a
SIGKILL: no cleanup, no ack). With DISPATCH_CRASH_ONCE set to a file path, only the first process to get
there dies (it creates the file); without it, every process does (a poison batch).
Unset (the normal case), `crash_point` costs one dict lookup.
"""
from __future__ import annotations

import os

CRASH_POINTS = ("after_claim", "after_request", "before_outcome_write")
_AT = os.environ.get("DISPATCH_CRASH_AT")
_ONCE = os.environ.get("DISPATCH_CRASH_ONCE")


def crash_point(name: str) -> None:
    if _AT != name:
        return
    if _ONCE:
        try:
            os.close(os.open(_ONCE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os._exit(137)

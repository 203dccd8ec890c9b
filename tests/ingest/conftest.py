"""Fixtures for ingest tests: recipient files built from text in the test, in any encoding."""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ingest_helpers, whatever pytest's import mode

from worker.ingest import IngestOptions, Verdict, open_recipient_file

from ingest_helpers import SMS


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write text (or bytes) to a fresh file: `write(text, encoding="utf-8", name=...)` → its path."""
    counter = iter(range(1_000_000))

    def _write(content: str | bytes, encoding: str = "utf-8", name: str | None = None) -> Path:
        path = tmp_path / (name or f"recipients-{next(counter)}.csv")
        data = content if isinstance(content, bytes) else content.encode(encoding)
        path.write_bytes(data)
        return path

    return _write


@pytest.fixture
def verdicts(write: Callable[..., Path]) -> Callable[..., list[Verdict]]:
    """Verdicts for text written with `write`: `verdicts(text, options=SMS, encoding="utf-8")`."""

    def _verdicts(content: str | bytes, options: IngestOptions = SMS, encoding: str = "utf-8") -> list[Verdict]:
        return list(open_recipient_file(write(content, encoding), options).iter_verdicts())

    return _verdicts

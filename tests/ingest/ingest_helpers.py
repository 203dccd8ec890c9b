"""Constants shared by the ingest tests (imported by name: conftest modules are not importable)."""
from __future__ import annotations

from worker.ingest import IngestOptions

SMS = IngestOptions(channel="sms", region="GB")
EMAIL = IngestOptions(channel="email")

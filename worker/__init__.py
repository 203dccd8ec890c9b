"""The dispatch engine: ingest, validation, API client, outcome store, sandbox and CLI (no broker needed)."""

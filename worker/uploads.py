"""Checked uploads (draft runs): a file validated once, its verdicts kept in Redis for a day, so any
`serve` process can show the check page and start the run without reading the file again."""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from worker import keys
from worker.errors import UsageError
from worker.ingest import IngestOptions, Verdict, open_recipient_file
from worker.ingest.options import make_verdict
from worker.statuses import Status

UPLOAD_TTL = 24 * 3600
CHUNK = 1000  # verdicts per RPUSH / LRANGE
PROBLEMS = 20  # problems kept for the check page and the API answer
PREVIEW = 3  # valid recipients kept to show the message as they will see it
ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


class UnknownUploadError(UsageError):
    http_status = 404

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"There is no upload {upload_id!r} (uploads are kept for 24 hours).")


def new_upload_id() -> str:
    return "up_" + secrets.token_hex(8)


class Uploads:
    """Upload drafts in Redis."""

    def __init__(self, client: redis.Redis, ttl: int = UPLOAD_TTL) -> None:
        self.redis, self.ttl = client, ttl

    def create(self, path: Path, options: IngestOptions, filename: str, upload_id: str | None = None) -> dict:
        """Validate the file at `path` (every check and limit of the CLI) and keep its verdicts; the
        summary. Raises InputError with the CLI's sentence when it is no usable recipient file."""
        upload_id = upload_id or new_upload_id()
        recipients = open_recipient_file(path, options)
        counts = {"rows": 0, "valid": 0, "invalid": 0, "duplicates": 0, "suppressed": 0}
        problems: list[dict] = []
        preview: list[dict] = []
        chunk: list[Verdict] = []
        for verdict in recipients.iter_verdicts():
            chunk.append(verdict)
            if len(chunk) >= CHUNK:
                self._store(upload_id, chunk, options.channel, counts, problems, preview)
                chunk = []
        self._store(upload_id, chunk, options.channel, counts, problems, preview)
        summary = {"upload": upload_id, **counts, "column": recipients.address_column,
                   "columns": recipients.address_columns,
                   "encoding": recipients.encoding, "delimiter": recipients.delimiter,
                   "fields": recipients.columns, "problems": problems, "preview": preview,
                   "channel": options.channel, "region": options.region or "", "filename": _shown_name(filename),
                   "created_at": time.time(), "expires_at": time.time() + self.ttl}
        self.redis.hset(keys.upload(upload_id), mapping={
            "summary": json.dumps(summary), "channel": options.channel, "region": options.region or "",
            "filename": summary["filename"], "rows": counts["rows"]})
        self.redis.expire(keys.upload(upload_id), self.ttl)
        return summary

    def _store(self, upload_id: str, chunk: list[Verdict], channel: str, counts: dict, problems: list,
               preview: list) -> None:
        if not chunk:
            return
        valid = [v for v in chunk if v.status == Status.PENDING]
        flags = self.redis.smismember(keys.suppressed(channel), [v.recipient for v in valid]) if valid else []
        suppressed = {v.row for v, flag in zip(valid, flags) if flag}
        for v in chunk:
            _count(v, v.row in suppressed, counts, problems, preview)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(keys.upload_rows(upload_id), *(_encode(v) for v in chunk))
            pipe.expire(keys.upload_rows(upload_id), self.ttl)
            pipe.execute()

    def get(self, upload_id: str) -> dict:
        """The upload's summary; UnknownUploadError when it never was or has expired."""
        if not set(upload_id) <= ID_CHARS:
            raise UnknownUploadError(upload_id)
        raw = self.redis.hget(keys.upload(upload_id), "summary")
        if raw is None:
            raise UnknownUploadError(upload_id)
        return json.loads(raw)

    def verdicts(self, upload_id: str) -> Iterator[Verdict]:
        """Every verdict of the upload in row order, read CHUNK at a time."""
        self.get(upload_id)
        start = 0
        while raw := self.redis.lrange(keys.upload_rows(upload_id), start, start + CHUNK - 1):
            yield from (_decode(item) for item in raw)
            start += len(raw)


def _count(v: Verdict, suppressed: bool, counts: dict, problems: list, preview: list) -> None:
    counts["rows"] += 1
    if v.status == Status.PENDING and suppressed:
        counts["suppressed"] += 1
    elif v.status == Status.PENDING:
        counts["valid"] += 1
        if len(preview) < PREVIEW:
            preview.append({"row": v.row, "recipient": v.recipient, "fields": v.fields})
    else:
        counts["duplicates" if v.status == Status.DUPLICATE else "invalid"] += 1
        if len(problems) < PROBLEMS:
            problems.append({"row": v.row, "input": v.given, "reason": v.reason})


def _encode(v: Verdict) -> str:
    return json.dumps([v.row, v.given, v.recipient, v.status.value, v.reason, v.fields, v.duplicate_of, v.column],
                      ensure_ascii=False, separators=(",", ":"))


def _decode(raw: str) -> Verdict:
    row, given, recipient, status, reason, fields, duplicate_of, *column = json.loads(raw)
    return make_verdict(row, given, recipient, Status(status), reason, fields, duplicate_of,
                        column=column[0] if column else "")


def _shown_name(filename: str) -> str:
    """The client's file name, reduced to a harmless base name."""
    name = Path(filename.replace("\\", "/")).name.strip() or "upload.csv"
    return "".join(c for c in name if c.isprintable())[:120]

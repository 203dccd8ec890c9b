"""Uploaded recipient files arrive as multipart bodies of up to gigabytes: parse them as they stream,
straight to an owner-only temp file under DISPATCH_HOME, refusing an oversized one at once."""
from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import Request

from worker.campaigns import CHANNELS, Campaign
from worker.ingest.validate import human_size
from worker.service.app import HTTPProblem, Service
from worker.settings import Settings

log = structlog.get_logger("dispatch.service.receive")

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096  # one text field (channel, region, csrf, a body or subject is longer: see LONG_FIELDS)
LONG_FIELDS = {"body": 64 * 1024, "subject": 4096}
MAX_FIELDS = 50
ENVELOPE_BYTES = 512 * 1024  # what a body may hold besides the file: boundaries, headers, fields


@dataclass
class ReceivedUpload:
    """A received multipart upload: the file (owner-only, under DISPATCH_HOME/uploads), the client's
    file name and the text fields. Use it as a context manager, or call discard(), to delete the file."""

    path: Path | None
    filename: str
    fields: dict[str, str] = field(default_factory=dict)
    size: int = 0

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> ReceivedUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def uploads_dir(settings: Settings) -> Path:
    """DISPATCH_HOME/uploads, created owner-only."""
    directory = Path(settings.home) / "uploads"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def too_large(settings: Settings) -> HTTPProblem:
    return HTTPProblem(413, f"The file is larger than the limit of {human_size(settings.max_file_bytes)} "
                            "(DISPATCH_MAX_FILE_BYTES).")


class _Receiver:
    """python-multipart callbacks: the `file` part to disk, the other parts into small strings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limit = settings.max_file_bytes
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.fields: dict[str, str] = {}
        self._file: BinaryIO | None = None
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._data = bytearray()
        self._in_file = False
        self._ended = False

    # -- the parser's callbacks ---------------------------------------------------------
    def on_part_begin(self) -> None:
        self._disposition, self._name, self._data, self._in_file = b"", "", bytearray(), False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if not self._name:
            raise HTTPProblem(400, "Every part of the form needs a name.")
        if self._name == FILE_FIELD:
            if self._file is not None or self.path is not None:
                raise HTTPProblem(400, "Send one file per upload.")
            self.filename = options.get(b"filename", b"upload.csv").decode("utf-8", "replace")
            self._open_file()
            self._in_file = True
        elif len(self.fields) >= MAX_FIELDS:
            raise HTTPProblem(400, f"The form has more than {MAX_FIELDS} fields.")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size += end - start
            if self.size > self.limit:
                raise too_large(self.settings)
            self._file.write(data[start:end])  # local disk, page cache: microseconds per chunk
            return
        self._data += data[start:end]
        cap = LONG_FIELDS.get(self._name, MAX_FIELD_BYTES)
        if len(self._data) > cap:
            raise HTTPProblem(400, f"The field {self._name[:40]!r} is longer than {human_size(cap)}.")

    def on_part_end(self) -> None:
        if self._in_file:
            self._file.close()
            self._file, self._in_file = None, False
        else:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def on_end(self) -> None:
        self._ended = True

    # -- the temp file ----------------------------------------------------------------
    def _open_file(self) -> None:
        self.path = uploads_dir(self.settings) / f"upload-{secrets.token_hex(12)}.part"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=1024 * 1024)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def received(self) -> ReceivedUpload:
        if not self._ended:
            raise HTTPProblem(400, "The form ended before its last part (an interrupted upload?).")
        if self.path is None:
            raise HTTPProblem(400, "The upload has no file: send it as the form field 'file'.")
        return ReceivedUpload(self.path, self.filename, self.fields, self.size)

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
            "on_header_end", "on_headers_finished", "on_end")}


def boundary_of(request: Request) -> bytes:
    """The multipart boundary, or 400 when the body is no multipart form."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise HTTPProblem(400, "Send the upload as multipart/form-data with the file in the field 'file'.")
    return boundary


def check_declared_length(request: Request, settings: Settings) -> None:
    """Refuse a body whose Content-Length is already over the limit, before reading any of it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_file_bytes + ENVELOPE_BYTES:
        raise too_large(settings)


async def receive_upload(request: Request, settings: Settings) -> ReceivedUpload:
    """Stream a multipart upload to disk as it arrives; the file, its client name and the text fields.
    HTTPProblem 413 as soon as the file passes DISPATCH_MAX_FILE_BYTES, 400 for a malformed form."""
    check_declared_length(request, settings)
    receiver = _Receiver(settings)
    parser = MultipartParser(boundary_of(request), receiver.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
        upload = receiver.received()
    except MultipartParseError:
        _discard(receiver)
        raise HTTPProblem(400, "The upload is not a well-formed multipart form.") from None
    except BaseException:  # HTTPProblem, ClientDisconnect, cancellation: no file is left behind
        _discard(receiver)
        raise
    log.info("upload received", bytes=upload.size, fields=sorted(upload.fields))
    return upload


def _discard(receiver: _Receiver) -> None:
    receiver.close()
    if receiver.path is not None:
        with contextlib.suppress(FileNotFoundError):
            receiver.path.unlink()


def campaign_of(fields: dict[str, str]) -> Campaign:
    """The ingest-relevant part of a campaign from the form's fields (channel checked here)."""
    channel = fields.get("channel", "").strip().lower()
    if not channel:
        raise HTTPProblem(400, "Choose a channel: sms or email.")
    if channel not in CHANNELS:
        raise HTTPProblem(422, f"The channel must be sms or email, not {channel[:40]!r}.")
    return Campaign(channel=channel, directory=fields.get("directory", "").strip(),
                    region=_optional(fields, "region"), phone_columns=_names(fields, "phone_column"),
                    email_columns=_names(fields, "email_column"), allow_landlines=_flag(fields, "allow_landlines"),
                    allow_smtputf8=_flag(fields, "allow_smtputf8"))


def _optional(fields: dict[str, str], name: str) -> str | None:
    return fields.get(name, "").strip() or None


def _names(fields: dict[str, str], name: str) -> tuple[str, ...]:
    """Column names, comma-separated in their fallback order ("Mobile, Phone")."""
    return tuple(part.strip() for part in fields.get(name, "").split(",") if part.strip())


def _flag(fields: dict[str, str], name: str) -> bool:
    return fields.get(name, "").strip().lower() in ("1", "on", "true", "yes")


def check_upload(service: Service, received: ReceivedUpload) -> dict:
    """Validate the received file as the CLI would and keep it as a 24-hour draft; the summary
    (worker.uploads.Uploads.create). Blocking: call it in a threadpool."""
    options = service.dispatch.ingest_options(campaign_of(received.fields))
    summary = service.dispatch.uploads.create(received.path, options, received.filename)
    log.info("upload checked", upload=summary["upload"], rows=summary["rows"], valid=summary["valid"])
    return summary

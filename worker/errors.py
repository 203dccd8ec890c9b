"""The one exception tree: what users did wrong (with exit codes) and what the API answered.

    DispatchError                    anything this project raises on purpose
    ├── UsageError        exit 2     bad flags, unknown run, unusable input, bad configuration
    │   ├── InputError               the recipient file cannot be used (unreadable, no address column, …)
    │   ├── UnknownRunError          no run with that ID
    │   └── ConfigError              settings, policy or scenario file is wrong
    ├── RunAbortedError   exit 3     the run was stopped by an account or configuration error
    └── CoupontoolsError             talking to the API went wrong; carries its ErrorClass
        ├── TransportError           no answer was read
        │   ├── NotSentError         connect refused / connect timeout: surely not sent (temporary)
        │   └── MaybeSentError       read timeout, reset, dropped connection: maybe sent (uncertain)
        ├── ProtocolError            an answer that is not the API's JSON envelope (uncertain on 2xx)
        ├── HTTPStatusError          a status without an error envelope: 429/503/408 temporary, 500/502/504
        │                            uncertain, other 4xx run (worker.catalogue.HTTP_STATUS_CLASS, [http])
        └── APIError                 the error envelope: `code` and `message`, classed by the policy

Every CoupontoolsError has `error_class` (worker.catalogue.ErrorClass), `code` (int or None) and
`retry_after` (seconds or None). Lower errors (httpx, aiohttp, json) become these in worker.client only.
"""
from __future__ import annotations

from worker.catalogue import ErrorClass, default_class


class DispatchError(Exception):
    """Base of every error raised on purpose; `exit_code` is what the CLI exits with, `http_status`
    what the HTTP API answers with."""

    exit_code = 1
    http_status = 503


class UsageError(DispatchError):
    exit_code = 2
    http_status = 400


class InputError(UsageError):
    """The recipient file (or list) cannot be used at all."""

    http_status = 422


class UnusableRequestError(UsageError):
    """The request names something that cannot be used: an unknown directory, a forbidden API URL."""

    http_status = 422


class ConflictError(UsageError):
    """The run's state does not allow it yet (still recording, still sending, forgotten)."""

    http_status = 409


class UnknownRunError(UsageError):
    http_status = 404

    def __init__(self, run_id: str) -> None:
        super().__init__(f"No run with ID {run_id!r} is known to this Redis.")
        self.run_id = run_id


class ConfigError(UsageError):
    """A setting, policy file or scenario file is wrong."""


class RunAbortedError(DispatchError):
    exit_code = 3


class CoupontoolsError(DispatchError):
    """Something went wrong talking to the API."""

    error_class: ErrorClass = ErrorClass.FAILED
    code: int | None = None
    retry_after: float | None = None

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


class TransportError(CoupontoolsError):
    """No answer could be read."""


class NotSentError(TransportError):
    """The request surely never reached the API (connection refused, connect timeout)."""

    error_class = ErrorClass.TEMPORARY


class MaybeSentError(TransportError):
    """The request may have reached the API, but no answer was read."""

    error_class = ErrorClass.UNCERTAIN


class ProtocolError(CoupontoolsError):
    """The answer is not the API's JSON envelope (not JSON, or JSON without status.status)."""

    def __init__(self, message: str, *, http_status: int | None = None,
                 error_class: ErrorClass = ErrorClass.UNCERTAIN) -> None:
        super().__init__(message, http_status=http_status)
        self.error_class = error_class


class HTTPStatusError(CoupontoolsError):
    """An HTTP status without an envelope: 'not now' (429, 503, 408), 'maybe acted on' (500, 502, 504:
    uncertain, never resent automatically) or 'wrong place' (other 4xx); see HTTP_STATUS_CLASS."""

    def __init__(self, message: str, *, http_status: int, retry_after: float | None,
                 error_class: ErrorClass) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after
        self.error_class = error_class


class APIError(CoupontoolsError):
    """The API's error envelope: a numeric code and its message."""

    def __init__(self, code: int, message: str, *, http_status: int | None = None,
                 retry_after: float | None = None, error_class: ErrorClass | None = None) -> None:
        super().__init__(message, http_status=http_status)
        self.code = code
        self.retry_after = retry_after
        self.error_class = error_class or default_class(code, message)

    def __str__(self) -> str:
        return f"error {self.code}: {self.message}"

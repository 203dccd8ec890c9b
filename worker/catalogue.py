"""The Coupontools error catalogue as data: every documented code, its default message and its class.

Classes (what the engine does with an answer):

    account      stop the whole run: credentials, expiry, missing integration
    run          stop the whole run: the campaign or a parameter is wrong
    invalid      this recipient's address was refused; never retried
    blacklisted  on the API's blacklist or opt-out list (605); never retried, suppressed
    temporary    retry with backoff, limited attempts
    failed       permanent for this recipient; never retried
    uncertain    the request may have reached the API; never resent automatically

Answers without the API's envelope are classed by their HTTP status alone (HTTP_STATUS_CLASS): a
gateway's 500/502/504 may hide a server that acted on the request, so they are uncertain, not retried.

Operators override classes per code, and per HTTP status, with a policy file (see worker.policy); this
module holds only the documented defaults, so tests can check that every documented code and every HTTP
status has exactly one class.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorClass(StrEnum):
    ACCOUNT = "account"
    RUN = "run"
    INVALID = "invalid"
    BLACKLISTED = "blacklisted"
    TEMPORARY = "temporary"
    FAILED = "failed"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class CodeInfo:
    code: int
    meaning: str
    message: str  # the message the API (and the sandbox) sends by default
    error_class: ErrorClass


# Code 301 carries two meanings; the message text decides (see classify_301).
CATALOGUE: dict[int, CodeInfo] = {
    info.code: info
    for info in (
        CodeInfo(1000, "invalid client ID or secret",
                 "HTTP/1.0 401 Unauthorized. Client ID or Secret not correct.", ErrorClass.ACCOUNT),
        CodeInfo(101, "account has expired", "HTTP/1.0 401 Unauthorized. Account has expired.",
                 ErrorClass.ACCOUNT),
        CodeInfo(103, "no SMS integration set up",
                 "HTTP/1.0 422 Unprocessable entity. No SMS integration found.", ErrorClass.ACCOUNT),
        CodeInfo(104, "no email integration set up",
                 "HTTP/1.0 422 Unprocessable entity. No email integration found.", ErrorClass.ACCOUNT),
        CodeInfo(200, "missing parameter",
                 "HTTP/1.0 422 Unprocessable entity. Missing parameter: campaign", ErrorClass.RUN),
        CodeInfo(301, "incorrect value (campaign, or the phone number)",
                 "HTTP/1.0 422 Unprocessable entity. Phone number not valid", ErrorClass.INVALID),
        CodeInfo(305, "email address is not valid",
                 "HTTP/1.0 422 Unprocessable entity. Email address not valid", ErrorClass.INVALID),
        CodeInfo(502, "directory or campaign ID not found",
                 "HTTP/1.0 404 Not Found. Campaign not found.", ErrorClass.RUN),
        CodeInfo(507, "directory ID not found", "HTTP/1.0 404 Not Found. Directory not found.",
                 ErrorClass.RUN),
        CodeInfo(602, "SMS not sent",
                 "SMS not sent to 'X'. Reason: provider temporarily unavailable.", ErrorClass.TEMPORARY),
        CodeInfo(604, "email not sent",
                 "Email not sent to 'X'. Reason: mail server temporarily unavailable.",
                 ErrorClass.TEMPORARY),
        CodeInfo(605, "number on the blacklist or opt-out list",
                 "SMS not sent to 'X'. Reason: This number is on the blacklist or opt-out list.",
                 ErrorClass.BLACKLISTED),
    )
}

# 301 with this text in its message is about the campaign parameter: the run is misconfigured.
CAMPAIGN_301_MARKER = "parameter: campaign"
CAMPAIGN_301_MESSAGE = "HTTP/1.0 422 Unprocessable entity. Invalid character in parameter: campaign"

UNKNOWN_CODE_CLASS = ErrorClass.FAILED


# The class of an answer without the API's envelope, by HTTP status (worker.client.read_answer): status →
# (class, why). A policy file's [http] section overrides these, e.g. 502 = "temporary" for at-least-once.
HTTP_STATUS_CLASS: dict[int, tuple[ErrorClass, str]] = {
    408: (ErrorClass.TEMPORARY, "request timeout: the server gave up before acting on it"),
    429: (ErrorClass.TEMPORARY, "rate limited: refused before acting on it, retry after Retry-After"),
    500: (ErrorClass.UNCERTAIN, "internal server error: the server may have acted before failing"),
    502: (ErrorClass.UNCERTAIN, "bad gateway: a server behind the gateway may have acted on it"),
    503: (ErrorClass.TEMPORARY, "unavailable: refused before acting on it, retry after Retry-After"),
    504: (ErrorClass.UNCERTAIN, "gateway timeout: a server behind the gateway may still be acting on it"),
}
OTHER_5XX_CLASS = ErrorClass.UNCERTAIN  # another 5xx says no more than a 500: maybe acted on
OTHER_STATUS_CLASS = ErrorClass.RUN     # another 4xx (or a 1xx/3xx) without the envelope: wrong URL or setup


def http_status_class(status: int) -> ErrorClass:
    """The default class of an envelope-less answer with HTTP status `status` (not 2xx: see read_answer)."""
    if status in HTTP_STATUS_CLASS:
        return HTTP_STATUS_CLASS[status][0]
    return OTHER_5XX_CLASS if 500 <= status <= 599 else OTHER_STATUS_CLASS


def default_class(code: int, message: str = "") -> ErrorClass:
    """The documented class of an API error code, 301 told apart by its message."""
    if code == 301 and CAMPAIGN_301_MARKER in message.lower():
        return ErrorClass.RUN
    info = CATALOGUE.get(code)
    return info.error_class if info else UNKNOWN_CODE_CLASS


def default_message(code: int, recipient: str = "X") -> str:
    """The message the API sends for a code by default (used by the sandbox)."""
    info = CATALOGUE.get(code)
    text = info.message if info else f"HTTP/1.0 422 Unprocessable entity. Error {code}."
    return text.replace("'X'", f"'{recipient}'")

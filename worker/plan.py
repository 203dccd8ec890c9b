"""What each row is sent and when: the run's template, SMS length limit, schedule and send window,
checked before anything is recorded, applied as each row is recorded, and again as it is sent."""
from __future__ import annotations

import json
from datetime import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from worker.errors import UsageError
from worker.messages import (Template, Window, check_timezone, field_name, field_values, segments_reason, sms_length,
                             zones_or_reason)
from worker.runs import RunSpec
from worker.statuses import Status

TIMEZONE_FIELD = "timezone"
NEVER_OPEN = "the send window never opens in all of the recipient's time zones ({zones})"


@dataclass(frozen=True)
class Recorded:
    """A valid row's fate when it is recorded: pending (send now), waiting (until `due`) or invalid."""

    status: Status
    reason: str = ""
    due: float = 0.0
    data: str | None = None  # JSON list of the stored field values (RunSpec.fields order)


@dataclass(frozen=True)
class AtSend:
    """A claimed row's fate when it is about to be sent: its text, or wait until `due`, or invalid."""

    text: str | None = None
    due: float = 0.0
    invalid: str = ""


class Plan:
    """The message rules of one run, built from its RunSpec."""

    def __init__(self, spec: RunSpec, url_length: int = 30) -> None:
        self.spec = spec
        self.channel = spec.channel
        raw = spec.body if spec.channel == "sms" else spec.subject
        self.template = Template.parse(raw or "")
        self.window = Window.parse(spec.window) if spec.window else None
        self.timezone = check_timezone(spec.timezone) if spec.timezone else "UTC"
        self.url_length = url_length
        self.stored = tuple(f for f in spec.fields.split(",") if f)
        self.address_field = spec.address_field

    # -- before recording ----------------------------------------------------------------------
    @staticmethod
    def stored_fields(spec: RunSpec, columns: Iterable[str] | None) -> str:
        """RunSpec.fields for this spec and these input columns: the template's fields, and the
        timezone column when a window applies (comma-separated)."""
        raw = spec.body if spec.channel == "sms" else spec.subject
        fields = list(Template.parse(raw or "").fields)
        names = {field_name(c) for c in columns or ()}
        if spec.window and TIMEZONE_FIELD in names and TIMEZONE_FIELD not in fields:
            fields.append(TIMEZONE_FIELD)
        return ",".join(fields)

    def check(self, columns: Iterable[str] | None) -> None:
        """Refuse a template naming a field no column provides (None: columns unknown up front)."""
        if columns is not None:
            self.template.check_fields(columns)

    @property
    def needs_fields(self) -> bool:
        return bool(self.stored)

    @property
    def static_text(self) -> str | None:
        """The message when it is the same for everybody (no fields)."""
        return None if self.template.has_fields else self.template.render({})

    # -- recording -----------------------------------------------------------------------------
    def values(self, recipient: str, fields: Mapping[str, str]) -> dict[str, str]:
        """A row's field values by field name (from its columns keyed by header)."""
        return self._with_recipient(field_values(fields), recipient)

    def _with_recipient(self, values: dict[str, str], recipient: str) -> dict[str, str]:
        """The values, with the recipient under the address column's field name."""
        if self.address_field:
            values[self.address_field] = recipient
        return values

    def record(self, recipient: str, fields: Mapping[str, str], now: float) -> Recorded:
        """A valid row's status when it is recorded (the row's other columns in `fields`)."""
        values = self.values(recipient, fields)
        missing = self.template.missing(values)
        if missing:
            return Recorded(Status.INVALID, f"no value for {missing}")
        if self.channel == "sms" and self.spec.max_segments:
            needed = sms_length(self.template.render(values), self.url_length).segments
            if needed > self.spec.max_segments:
                return Recorded(Status.INVALID, segments_reason(needed, self.spec.max_segments))
        data = json.dumps([values.get(f, "") for f in self.stored], ensure_ascii=False,
                          separators=(",", ":")) if self.stored else None
        start = max(now, self.spec.send_at)
        due, reason = self._window_opens(recipient, values.get(TIMEZONE_FIELD, ""), start)
        if reason:
            return Recorded(Status.INVALID, reason)
        if due > now:
            return Recorded(Status.WAITING, "", due, data)
        return Recorded(Status.PENDING, "", 0.0, data)

    def _window_opens(self, recipient: str, row_zone: str, start: float) -> tuple[float, str]:
        """When the row may go (≥ start), or a reason it never can."""
        if self.window is None:
            return start, ""
        zones, reason = zones_or_reason(self.channel, recipient, row_zone or None, self.timezone)
        if reason:
            return 0.0, reason
        opens = self.window.next_open(zones, start)
        if opens is None:
            return 0.0, NEVER_OPEN.format(zones=", ".join(zones))
        return opens, ""

    # -- sending -------------------------------------------------------------------------------
    def at_send(self, recipient: str, data: str | None, now: float) -> AtSend:
        """The text to send now, or when the row must wait (its window has closed since), or invalid."""
        values = self._with_recipient(dict(zip(self.stored, json.loads(data))) if data else {}, recipient)
        if self.window is not None:
            due, reason = self._window_opens(recipient, values.get(TIMEZONE_FIELD, ""), now)
            if reason:
                return AtSend(invalid=reason)
            if due > now:
                return AtSend(due=due)
        missing = self.template.missing(values)
        if missing:
            return AtSend(invalid=f"no value for {missing}")
        return AtSend(text=self.template.render(values))



def parse_send_at(value: str | float | None) -> float:
    """`--send-at`: ISO 8601 with an offset (`2026-12-01T09:00:00+01:00`, `…Z`) or unix seconds → unix
    seconds (0.0 for none). A time without an offset is refused: it would mean a different instant on
    every machine."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise UsageError(f"--send-at {text!r} is not an ISO 8601 time such as 2026-12-01T09:00:00+01:00.") from None
    if when.tzinfo is None:
        raise UsageError(f"--send-at {text!r} has no offset; add one, such as +01:00 or Z.")
    return when.timestamp()


class MessageStats:
    """`validate --body/--subject`: how long each valid row's message is (SMS segments, UCS-2) and the
    message of the first rows, gathered as the verdicts stream by."""

    PREVIEW_ROWS = 3

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.segments: dict[int, int] = {}
        self.ucs2 = 0
        self.missing = 0
        self.over_limit = 0  # rows whose message needs more segments than --max-segments
        self.preview: list[dict] = []

    def watch(self, verdicts: Iterable) -> Iterable:
        """The same verdicts, observed on their way."""
        for verdict in verdicts:
            if verdict.status == Status.PENDING:
                self.observe(verdict.row, verdict.recipient, verdict.fields)
            yield verdict

    def observe(self, row: int, recipient: str, fields: Mapping[str, str]) -> None:
        values = self.plan.values(recipient, fields)
        if self.plan.template.missing(values):
            self.missing += 1
            return
        text = self.plan.template.render(values)
        if self.plan.channel == "sms":
            length = sms_length(text, self.plan.url_length)
            self.segments[length.segments] = self.segments.get(length.segments, 0) + 1
            self.ucs2 += length.encoding == "ucs2"
            limit = self.plan.spec.max_segments
            self.over_limit += bool(limit) and length.segments > limit
        if len(self.preview) < self.PREVIEW_ROWS:
            self.preview.append({"row": row, "text": text})

    def as_dict(self) -> dict:
        found = {"preview": self.preview, "missing_fields": self.missing}
        if self.plan.channel == "sms":
            found.update({"segments": {str(k): v for k, v in sorted(self.segments.items())}, "ucs2": self.ucs2})
            if self.plan.spec.max_segments:
                found["over_limit"] = self.over_limit
        return found

"""The application layer: the CLI, the HTTP service, the drop folder and `submit()` create, read and
control runs through `Dispatch`, so every rule (API-URL allowlist, directory check, ingest limits,
idempotent run IDs) lives here once.

The caller hands in how batches are queued (`Publisher`, Celery's in tasks/) and, for a run aimed at
a sandbox it started itself, the sandbox URL. Nothing here imports Celery or the web stack.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from worker import keys
from worker.client import CoupontoolsClient, Credentials
from worker.errors import APIError, CoupontoolsError, UnusableRequestError, UsageError
from worker.ingest import IngestOptions, Verdict, open_recipient_file, validate_records
from worker.messages import field_name
from worker.plan import MessageStats, Plan, parse_send_at
from worker.policy import load_policy, policy_to_json
from worker.redis_server import connect, resolve_redis_url
from worker.reports import MAX_SCAN, Page, ReportRow, iter_report, page
from worker.runs import Publisher, Runs, RunSpec, is_recorded
from worker.settings import SANDBOX_CREDENTIALS, Settings, is_allowed_api_url
from worker.statuses import RunState
from worker.uploads import Uploads

CHANNELS = ("sms", "email")


class ApiUrlNotAllowedError(UnusableRequestError):
    """A run named an API URL that the workers' credentials may not be sent to."""


@dataclass(frozen=True)
class Campaign:
    """What to send and how, as a front door receives it (before any file is read)."""

    channel: str
    directory: str
    body: str = ""
    subject: str = ""
    region: str | None = None
    rate: float | None = None
    api_url: str | None = None  # a run's own API URL: an allowed one, or any URL with sandbox=True
    sandbox: bool = False  # send with the sandbox's public credentials instead of the workers' own
    webhook_url: str = ""
    send_at: str | float | None = None  # ISO 8601 with an offset (or unix time): the run starts then
    window: str = ""  # recipients' local send window, "09:00-20:00"
    timezone: str = ""  # IANA zone for recipients whose number has none; default UTC
    max_segments: int | None = None  # SMS: rows whose message needs more segments end invalid
    # Address columns each row tries in order; empty: every column with a known header, mobile-like
    # names first.
    phone_columns: tuple[str, ...] = ()
    email_columns: tuple[str, ...] = ()
    allow_landlines: bool = False  # SMS: fixed-line numbers pass (providers that read texts aloud)
    allow_smtputf8: bool = False  # email: addresses with non-ASCII before the @ pass

    def checked(self) -> Campaign:
        """This campaign, or UsageError saying in one sentence what is wrong with it."""
        if self.channel not in CHANNELS:
            raise UsageError(f"The channel must be sms or email, not {self.channel!r}.")
        if not self.directory.startswith(("dir_", "cam_")):
            raise UsageError(f"{self.directory!r} is not a directory (dir_…) or coupon (cam_…) ID.")
        if self.rate is not None and not self.rate > 0:
            raise UsageError("The rate must be a positive number of messages per second.")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise UsageError("The webhook URL must start with http:// or https://.")
        if self.max_segments is not None and self.max_segments < 1:
            raise UsageError("The segment limit must be a positive number of SMS segments.")
        return self


@dataclass(frozen=True)
class Target:
    """Where a run's requests go and with which credentials (None: the workers' own)."""

    url: str
    credentials: Credentials | None


class Dispatch:
    """The operations every front door shares, over one Redis."""

    def __init__(self, settings: Settings, publish: Publisher) -> None:
        self.settings, self.publish = settings, publish
        self._runs: Runs | None = None

    @property
    def runs(self) -> Runs:
        if self._runs is None:
            self._runs = Runs(connect(resolve_redis_url(self.settings)), batch_size=self.settings.batch_size,
                              stall_timeout=self.settings.stall_timeout, webhook_url=self.settings.webhook_url)
        return self._runs

    def publishing_with(self, publish: Publisher) -> Dispatch:
        """The same application over the same Redis connection, queueing batches through `publish`."""
        other = Dispatch(self.settings, publish)
        other._runs = self._runs
        return other

    @property
    def uploads(self) -> Uploads:
        return Uploads(self.runs.redis)

    # -- checks -----------------------------------------------------------------------------
    def target(self, campaign: Campaign) -> Target:
        """The API URL and credentials for the campaign; refuses a URL the workers' secret may not see."""
        url = (campaign.api_url or self.settings.api_url).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"The API URL must start with http:// or https://, not {url!r}.")
        if campaign.sandbox:
            return Target(url, Credentials(*SANDBOX_CREDENTIALS))
        if not is_allowed_api_url(self.settings, url):
            raise ApiUrlNotAllowedError(
                f"The API URL {url} is not allowed: the workers' credentials go only to COUPONTOOLS_API_URL "
                "or DISPATCH_ALLOWED_API_URLS (use the sandbox for anything else).")
        creds = (Credentials(self.settings.client_id, self.settings.client_secret)
                 if self.settings.client_id and self.settings.client_secret else None)
        return Target(url, creds)

    def check_directory(self, campaign: Campaign, target: Target) -> None:
        """Refuse an unknown directory before anything is queued (one directory/info call)."""
        if campaign.directory.startswith("cam_") or target.credentials is None:
            return  # coupons have no info endpoint; without credentials the workers' own are used
        try:
            asyncio.run(_directory_info(target, campaign.directory))
        except APIError as exc:
            if exc.code in (502, 507):
                raise UnusableRequestError(f"Coupontools does not know the directory {campaign.directory} "
                                 f"(error {exc.code}).") from None
        except CoupontoolsError:
            pass  # account and transport problems are recorded by the run itself, row by row

    def ingest_options(self, campaign: Campaign, workers: int = 1) -> IngestOptions:
        phones, emails = campaign.phone_columns or (), campaign.email_columns or ()
        return IngestOptions(channel=campaign.channel, region=campaign.region,
                             phone_columns=(phones,) if isinstance(phones, str) else tuple(phones),
                             email_columns=(emails,) if isinstance(emails, str) else tuple(emails),
                             allow_landlines=bool(campaign.allow_landlines),
                             allow_smtputf8=bool(campaign.allow_smtputf8),
                             max_bytes=self.settings.max_file_bytes, max_rows=self.settings.max_rows,
                             workers=workers)

    def spec(self, campaign: Campaign, target: Target, source: str, columns: list[str] | None = None,
             address_field: str = "") -> RunSpec:
        """The run's stored spec; `columns` are the input's fields, checked against the template."""
        policy = self.settings.policy_file
        own_url = campaign.sandbox or bool(campaign.api_url)  # else each worker's COUPONTOOLS_API_URL
        spec = RunSpec(channel=campaign.channel, directory=campaign.directory, subject=campaign.subject,
                       body=campaign.body, region=campaign.region or "", rate=campaign.rate or 0.0,
                       sandbox=campaign.sandbox, api_url=target.url if own_url else "", source=source,
                       policy=policy_to_json(load_policy(policy)) if policy else "",
                       webhook_url=campaign.webhook_url, send_at=parse_send_at(campaign.send_at),
                       window=campaign.window, timezone=campaign.timezone,
                       max_segments=campaign.max_segments or 0, address_field=field_name(address_field))
        try:
            spec = replace(spec, fields=Plan.stored_fields(spec, columns))
            self.plan(spec).check(None if columns is None else [*columns, address_field])
        except UnusableRequestError:
            raise
        except UsageError as exc:  # the message, window or time zone cannot be used: 422 over HTTP
            raise UnusableRequestError(str(exc)) from None
        return spec

    def plan(self, spec: RunSpec) -> Plan:
        return Plan(spec, self.settings.sms_url_length)

    def message_stats(self, campaign: Campaign, columns: list[str], address_column: str) -> MessageStats | None:
        """For `validate --body/--subject`: the template checked against the columns, and a collector
        of segment counts and previews (None without a message)."""
        spec = RunSpec(channel=campaign.channel, directory="", body=campaign.body, subject=campaign.subject,
                       window=campaign.window, timezone=campaign.timezone, send_at=parse_send_at(campaign.send_at),
                       max_segments=campaign.max_segments or 0, address_field=field_name(address_column))
        spec = replace(spec, fields=Plan.stored_fields(spec, columns))
        plan = self.plan(spec)  # a bad window or time zone is refused here, as `send` would
        if not (campaign.body if campaign.channel == "sms" else campaign.subject):
            return None
        plan.check([*columns, address_column])
        return MessageStats(plan)

    # -- starting runs ----------------------------------------------------------------------
    def start_from_file(self, campaign: Campaign, path: str | Path, *, run_id: str | None = None,
                        workers: int = 1, source: str | None = None) -> str:
        """Validate a recipient file, record the run and queue it; the run ID."""
        campaign, target = self._prepare(campaign)
        recipients = open_recipient_file(path, self.ingest_options(campaign, workers))
        spec = self.spec(campaign, target, source or f"file:{Path(path).name}", recipients.columns,
                         recipients.address_column)
        return self._create(spec, recipients.iter_verdicts(), run_id, recipients.rows)

    def start_from_records(self, campaign: Campaign, records: Iterable[dict], *, run_id: str | None = None,
                           source: str = "python") -> str:
        """The `submit()` contract: a list of dicts with a phone or email (and template fields)."""
        campaign, target = self._prepare(campaign)
        columns = _record_keys(records)
        spec = self.spec(campaign, target, source, columns, "phone" if campaign.channel == "sms" else "email")
        verdicts = validate_records(records, self.ingest_options(campaign))
        expected = len(records) if hasattr(records, "__len__") else None
        return self._create(spec, verdicts, run_id, expected)

    def start_from_upload(self, campaign: Campaign, upload_id: str, *, run_id: str | None = None) -> str:
        """Start a run from a checked upload; the same upload started twice makes one run."""
        upload = self.uploads.get(upload_id)
        campaign = replace(campaign, channel=upload["channel"], region=upload.get("region") or None)
        campaign, target = self._prepare(campaign)
        spec = self.spec(campaign, target, f"upload:{upload['filename']}", upload.get("fields"),
                         upload.get("column", ""))
        return self._create(spec, self.uploads.verdicts(upload_id), run_id or f"run_{upload_id}",
                            int(upload["rows"]))

    def start_from_directory_users(self, campaign: Campaign, *, run_id: str | None = None) -> str:
        """The directory's registered users are the recipients (`/directoryusers/list`)."""
        campaign, target = self._prepare(campaign)
        if target.credentials is None:
            raise UsageError("Sending to directory users needs COUPONTOOLS_CLIENT_ID and "
                             "COUPONTOOLS_CLIENT_SECRET (or the sandbox).")
        users = asyncio.run(_fetch_directory_users(target, campaign.directory))
        records = ({**{name: str(u.get(name) or "") for name in USER_FIELDS}, "registration": u.get("ID", "")}
                   for u in users)
        address = "phone" if campaign.channel == "sms" else "email"
        spec = self.spec(campaign, target, "directory-users", [*USER_FIELDS, "registration"], address)
        verdicts = validate_records(records, self.ingest_options(campaign))
        return self._create(spec, verdicts, run_id, len(users))

    def _prepare(self, campaign: Campaign) -> tuple[Campaign, Target]:
        campaign = campaign.checked()
        target = self.target(campaign)
        self.check_directory(campaign, target)
        return campaign, target

    def _create(self, spec: RunSpec, verdicts: Iterable[Verdict], run_id: str | None,
                expected: int | None) -> str:
        plan = self.plan(spec) if _has_message_rules(spec) else None
        return self.runs.create(spec, verdicts, self.publish, run_id=run_id, expected_rows=expected, plan=plan)

    def exists(self, run_id: str) -> bool:
        return bool(self.runs.redis.exists(keys.run(run_id)))

    def is_recorded(self, run_id: str) -> bool:
        """Whether every row of the run is recorded (starting it again then changes nothing)."""
        return is_recorded(self.runs.redis.hgetall(keys.run(run_id)))

    # -- reading ----------------------------------------------------------------------------
    def status(self, run_id: str) -> dict:
        return self.runs.status(run_id)

    def list_runs(self, limit: int = 20) -> list[dict]:
        return [self.runs.status(r) for r in self.runs.list_runs(limit)]

    def report(self, run_id: str, status: str | None = None) -> Iterator[ReportRow]:
        return iter_report(self.runs, run_id, status=status)

    def recipients(self, run_id: str, *, start: int = 1, limit: int = 50, status: str | None = None,
                   query: str = "", max_scan: int = MAX_SCAN) -> Page:
        """One page of the recipients table (worker.reports.page)."""
        return page(self.runs, run_id, start=start, limit=limit, status=status, query=query, max_scan=max_scan)

    # -- control ----------------------------------------------------------------------------
    def pause(self, run_id: str) -> bool:
        return self.runs.pause(run_id)

    def resume(self, run_id: str) -> bool:
        return self.runs.resume(run_id, self.publish)

    def cancel(self, run_id: str) -> bool:
        return self.runs.cancel(run_id)

    def retry(self, run_id: str, include_uncertain: bool = False) -> int:
        return self.runs.retry(run_id, self.publish, include_uncertain=include_uncertain)

    def forget(self, run_id: str) -> None:
        self.runs.forget(run_id)

    def control(self, run_id: str, action: str, include_uncertain: bool = False) -> dict:
        """pause/resume/cancel/retry by name, as the HTTP API and the pages call them."""
        self.runs.meta(run_id)  # UnknownRunError first
        if action == "retry":
            changed = self.retry(run_id, include_uncertain) > 0
        else:
            changed = {"pause": self.pause, "resume": self.resume, "cancel": self.cancel}[action](run_id)
        return {"run": run_id, "changed": bool(changed), "state": self.status(run_id)["state"]}


FINISHED_STATES = frozenset({RunState.COMPLETED, RunState.ABORTED, RunState.CANCELLED})
USER_FIELDS = ("phone", "email", "first_name", "last_name", "gender", "birthday", "age_range")


def _has_message_rules(spec: RunSpec) -> bool:
    """Whether rows need the plan at record time (plain campaigns skip it: no cost per row)."""
    return bool(spec.fields or spec.window or spec.send_at or spec.max_segments)


def _record_keys(records: Iterable[dict]) -> list[str] | None:
    """The fields a list of records offers (the union of their keys); None for a stream."""
    if not isinstance(records, (list, tuple)):
        return None
    return list(dict.fromkeys(str(k) for r in records if isinstance(r, dict) for k in r))


async def _directory_info(target: Target, directory: str) -> dict:
    async with CoupontoolsClient(base_url=target.url, credentials=target.credentials) as client:
        return await client.directory_info(directory)


async def _fetch_directory_users(target: Target, directory: str) -> list[dict]:
    async with CoupontoolsClient(base_url=target.url, credentials=target.credentials) as client:
        try:
            return [user async for user in client.iter_directory_users(directory)]
        except CoupontoolsError as exc:
            raise UsageError(f"Could not list the users of {directory}: {exc}.") from None

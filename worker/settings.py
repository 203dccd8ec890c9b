"""The one place that reads the environment: every other module is handed a Settings object."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import ConfigError

DEFAULT_API_URL = "https://api.coupontools.com/v3"
SANDBOX_CREDENTIALS = ("sandbox", "sandbox")


@dataclass(frozen=True)
class Settings:
    """Everything configurable. Defaults suit production; tests and the demo pass their own."""

    redis_url: str | None = None  # None: the embedded Redis under `home`
    home: Path = Path(".dispatch")
    api_url: str = DEFAULT_API_URL
    client_id: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    policy_file: Path | None = None
    batch_size: int = 2000  # recipients per Celery task (bench/throughput.py: 2,000 beats 500 and 1,000)
    concurrency: int = 200  # requests in flight per worker process
    account_rate: float | None = None  # default sends/s across all workers when a run sets none
    request_timeout: float = 30.0  # read timeout for one API call
    connect_timeout: float = 5.0
    visibility_timeout: int = 120  # seconds before an unacknowledged batch is redelivered (see claim_window)
    max_deliveries: int = 3  # a batch whose deliveries died unfinished more often than this is poison
    stall_timeout: float = 180.0  # seconds without progress (and no live batch) before a run is healed
    min_replicas: int = 0  # replicas that must hold a claim before its send (WAIT / WAITAOF)
    max_file_bytes: int = 2 * 1024**3
    max_rows: int = 5_000_000
    json_logs: bool = False
    webhook_url: str | None = field(default=None, repr=False)  # announce finished runs (worker.webhooks)
    webhook_secret: str | None = field(default=None, repr=False)  # signs the announcements
    allowed_api_urls: tuple[str, ...] = ()  # more URLs the workers' credentials may go to (besides api_url)
    api_token: str | None = field(default=None, repr=False)  # `serve`'s token; None: generated under home
    sms_url_length: int = 30  # characters Coupontools' appended URL takes in an SMS (plus a space)
    metrics_public: bool = False  # /metrics without the token (a scraper inside a private network)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment (DISPATCH_*, REDIS_URL, COUPONTOOLS_*), then overrides."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "redis_url": env.get("REDIS_URL") or None,
            "home": Path(env.get("DISPATCH_HOME") or ".dispatch"),
            "api_url": env.get("COUPONTOOLS_API_URL") or DEFAULT_API_URL,
            "client_id": env.get("COUPONTOOLS_CLIENT_ID") or None,
            "client_secret": env.get("COUPONTOOLS_CLIENT_SECRET") or None,
            "policy_file": Path(env["DISPATCH_POLICY"]) if env.get("DISPATCH_POLICY") else None,
            "webhook_url": env.get("DISPATCH_WEBHOOK_URL") or None,
            "webhook_secret": env.get("DISPATCH_WEBHOOK_SECRET") or None,
            "allowed_api_urls": tuple(u.strip().rstrip("/") for u in env.get("DISPATCH_ALLOWED_API_URLS", "")
                                      .split(",") if u.strip()),
            "api_token": env.get("DISPATCH_API_TOKEN") or None,
            "metrics_public": env.get("DISPATCH_METRICS_PUBLIC", "") in ("1", "true", "yes"),
        }
        for name, kind in _NUMERIC.items():
            raw = env.get(f"DISPATCH_{name.upper()}")
            if raw:
                values[name] = _number(name, raw, kind)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def claim_window(self) -> float:
        """Seconds a batch may go on claiming: a third of the visibility timeout."""
        return self.visibility_timeout / 3

    @property
    def send_timeout(self) -> float:
        """Seconds one request may take in all: at most a third of the visibility timeout, so a batch
        (claims, then its last answers, then its writes) always ends well before redelivery."""
        return min(self.request_timeout + self.connect_timeout, self.visibility_timeout / 3)


def is_allowed_api_url(settings: Settings, url: str) -> bool:
    """Whether the workers' credentials may be sent to `url`: the configured API URL or one of
    DISPATCH_ALLOWED_API_URLS (compared without a trailing slash), or anywhere when the credentials
    are the sandbox's public ones (nothing secret to give away)."""
    wanted = url.rstrip("/")
    return (wanted == settings.api_url.rstrip("/") or wanted in settings.allowed_api_urls
            or (settings.client_id, settings.client_secret) == SANDBOX_CREDENTIALS)


_NUMERIC = {
    "batch_size": int, "concurrency": int, "account_rate": float, "request_timeout": float,
    "connect_timeout": float, "visibility_timeout": int, "max_deliveries": int,
    "max_file_bytes": int, "max_rows": int, "stall_timeout": float, "min_replicas": int,
    "sms_url_length": int,
}
_MAY_BE_ZERO = frozenset({"min_replicas", "sms_url_length"})


def _number(name: str, raw: str, kind: type) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"DISPATCH_{name.upper()} must be a number, not {raw!r}.") from None
    if value < 0 or (value == 0 and name not in _MAY_BE_ZERO):
        raise ConfigError(f"DISPATCH_{name.upper()} must be positive, not {raw!r}.")
    return value

"""The drop folder: recipient files dropped into a directory become runs, through the application layer.

A file `NAME.csv` (or .tsv, .txt) is picked up once its size and mtime (and those of `NAME.toml`) have
stayed the same across two polls at least `settle_seconds` apart. Its settings come from `NAME.toml`
beside it, else `DIR/campaign.toml`. The run ID derives from the file's bytes and the effective
settings, so the same content dropped twice (under any name, by any watcher, after any restart) is one
run: `Dispatch.start_from_file` is idempotent for a given run ID. While the run is open the file stays
where it is; once it is done the file, its report and its TOML move to `DIR/done/`. An unusable file
moves to `DIR/rejected/` with `NAME.error.txt` holding the one-sentence reason.

All state lives in the files and in Redis: a restarted watcher finds the open runs again by their IDs.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import redis
import structlog

from worker.campaigns import Campaign, Dispatch
from worker.errors import ConfigError, DispatchError
from worker.reports import write_csv

RECIPIENT_SUFFIXES = (".csv", ".tsv", ".txt")
IGNORED_SUFFIXES = (".part", ".tmp", ".toml", ".error.txt")
DONE, REJECTED = "done", "rejected"
SHARED_SETTINGS = "campaign.toml"
SETTLE_SECONDS = 2.0
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing (flat memory for any size)
SETTINGS_FIELDS: dict[str, tuple[type, ...]] = {
    "channel": (str,), "directory": (str,), "body": (str,), "subject": (str,), "region": (str,),
    "rate": (int, float), "phone_column": (str, list), "email_column": (str, list), "webhook_url": (str,),
    "send_at": (str,), "window": (str,), "timezone": (str,), "max_segments": (int,),
    "allow_landlines": (bool,), "allow_smtputf8": (bool,),
}
KIND_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
REQUIRED_SETTINGS = ("channel", "directory")
UNEXPECTED = "The file could not be processed because of an unexpected error (see the watcher's log)."

log = structlog.get_logger("dispatch.watch")


@dataclass(frozen=True)
class Event:
    """Something the watcher did with a file; `str()` is the line `dispatch watch` prints."""

    kind: str  # picked_up, started, done, rejected
    name: str  # the recipient file's name in DIR
    run_id: str = ""
    detail: str = ""

    def __str__(self) -> str:
        run = f" run {self.run_id}" if self.run_id else ""
        return {"picked_up": f"picked up {self.name}",
                "started": f"started{run} for {self.name}{_paren(self.detail)}",
                "done": f"done {self.name}:{run} {self.detail}",
                "rejected": f"rejected {self.name}: {self.detail}"}.get(self.kind, f"{self.kind} {self.name}")


@dataclass(frozen=True)
class Seen:
    """A pending file's signature (its size and mtime, and its TOML's) and when it was first seen so."""

    signature: tuple
    since: float


@dataclass
class OpenRun:
    """A file whose run is recorded and not yet done; it stays in DIR until then."""

    path: Path
    run_id: str


class Watcher:
    """Polls one drop folder; `poll_once` does one pass (tests inject `now`), `run_forever` loops."""

    def __init__(self, dispatch: Dispatch, directory: Path, *, sandbox_url: str | None = None,
                 settle_seconds: float = SETTLE_SECONDS) -> None:
        self.dispatch, self.directory = dispatch, Path(directory)
        self.sandbox_url, self.settle_seconds = sandbox_url, settle_seconds
        self.pending: dict[Path, Seen] = {}
        self.open: dict[Path, OpenRun] = {}
        self._digests: dict[tuple[Path, int, int], Any] = {}  # (path, size, mtime_ns) -> sha256 of the bytes

    # -- the loop ---------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing pending and no run open (what `--once` waits for)."""
        return not self.pending and not self.open

    def run_forever(self, stop: threading.Event | None = None, every: float = 1.0,
                    on_poll: Callable[[list[Event]], None] | None = None) -> None:
        """Poll every `every` seconds until `stop` is set; `on_poll` sees each pass's events."""
        stop = stop or threading.Event()
        while not stop.is_set():
            events = self.poll_once()
            if on_poll is not None:
                on_poll(events)
            stop.wait(every)

    def poll_once(self, now: float | None = None) -> list[Event]:
        """One pass: finish the runs that are done, then look at every recipient file in DIR."""
        now = time.monotonic() if now is None else now
        events = [event for run in list(self.open.values()) for event in self._finish_if_done(run)]
        present = set(self._recipient_files())
        for path in sorted(present - set(self.open)):
            events.extend(self._look_at(path, now))
        for gone in set(self.pending) - present:
            del self.pending[gone]
        self._digests = {key: d for key, d in self._digests.items() if key[0] in present}
        return events

    def _recipient_files(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            raise ConfigError(f"The drop folder {self.directory} does not exist.") from None
        return [self.directory / e.name for e in entries if _is_recipient_file(e)]

    # -- one file ---------------------------------------------------------------------------
    def _look_at(self, path: Path, now: float) -> list[Event]:
        """Start the file's run once it has settled; reject it if it cannot be used."""
        if not self._settled(path, now):
            return []
        del self.pending[path]
        events = [Event("picked_up", path.name)]
        try:
            events.append(self._start(path))
        except DispatchError as exc:
            events.append(self._reject(path, str(exc)))
        except redis.RedisError as exc:  # Redis is away: try the file again later, do not reject it
            log.warning("redis unavailable, file left for later", file=path.name, error=type(exc).__name__)
        except Exception as exc:  # a bug must not stop the watcher
            log.error("unexpected error, file rejected", file=path.name, error=type(exc).__name__,
                      exc_info=bool(os.environ.get("DISPATCH_DEBUG")))  # the message may hold an address
            events.append(self._reject(path, UNEXPECTED))
        return events

    def _settled(self, path: Path, now: float) -> bool:
        """Whether the file looks the same as at a poll at least `settle_seconds` ago."""
        signature = self._signature(path)
        seen = self.pending.get(path)
        if signature is None:
            self.pending.pop(path, None)
            return False
        if seen is None or seen.signature != signature:
            self.pending[path] = Seen(signature, now)
            return False
        return now - seen.since >= self.settle_seconds

    def _signature(self, path: Path) -> tuple | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        toml = _stat_or_none(path.with_suffix(".toml"))
        return (st.st_size, st.st_mtime_ns, toml)

    def _start(self, path: Path) -> Event:
        campaign = self._campaign(path)
        run_id = self.run_id(path, campaign)
        known = self.dispatch.exists(run_id)
        log.info("starting run", run_id=run_id, file=path.name, known=known)
        self.dispatch.start_from_file(campaign, path, run_id=run_id, source=f"drop:{path.name}")
        self.open[path] = OpenRun(path, run_id)
        status = self.dispatch.status(run_id)
        detail = f"{status['total']} rows" + (", an existing run: nothing is sent twice" if known else "")
        return Event("started", path.name, run_id, detail)

    def _campaign(self, path: Path) -> Campaign:
        own, shared = path.with_suffix(".toml"), self.directory / SHARED_SETTINGS
        source = own if own.is_file() else shared if shared.is_file() else None
        if source is None:
            raise ConfigError(f"{path.name} has no settings: put {own.name} beside it or "
                              f"{SHARED_SETTINGS} in the drop folder.")
        campaign = Campaign(**read_settings(source))
        if self.sandbox_url:
            campaign = replace(campaign, api_url=self.sandbox_url, sandbox=True)
        return campaign

    def run_id(self, path: Path, campaign: Campaign) -> str:
        """`drop_` and 20 hex digits of sha256(the file's bytes, then the settings as canonical JSON)."""
        digest = self._content_digest(path).copy()
        digest.update(canonical_settings(campaign).encode())
        return "drop_" + digest.hexdigest()[:20]

    def _content_digest(self, path: Path) -> Any:
        """The sha256 state after the file's bytes, read in chunks, cached by (path, size, mtime)."""
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(HASH_CHUNK):
                    digest.update(chunk)
            self._digests[key] = digest
        return self._digests[key]

    # -- endings ----------------------------------------------------------------------------
    def _finish_if_done(self, run: OpenRun) -> list[Event]:
        """Once the run is done: its report, the file and its TOML into done/."""
        try:
            status = self.dispatch.status(run.run_id)
            if not status["done"]:
                return []
            target = self._file_away(run.path, DONE, lambda stem: self._write_report(run.run_id, stem))
        except redis.RedisError as exc:
            log.warning("redis unavailable, run looked at later", run_id=run.run_id, error=type(exc).__name__)
            return []
        except Exception as exc:
            log.error("could not finish the run's file", run_id=run.run_id, file=run.path.name,
                      error=type(exc).__name__)
            del self.open[run.path]  # found again (same run ID) on the next pass if it is still there
            return []
        del self.open[run.path]
        log.info("run done, file moved", run_id=run.run_id, file=run.path.name, state=status["state"])
        return [Event("done", run.path.name, run.run_id, f"{_outcome(status)} -> {DONE}/{target.name}")]

    def _write_report(self, run_id: str, stem: Path) -> None:
        report = stem.with_name(stem.name + ".report.csv")
        partial = stem.with_name(f".{stem.name}.report.csv.tmp")
        with open(partial, "w", encoding="utf-8", newline="") as out:
            write_csv(self.dispatch.report(run_id), out)
        os.replace(partial, report)

    def _reject(self, path: Path, reason: str) -> Event:
        """Into rejected/ with NAME.error.txt holding the reason."""
        log.info("file rejected", file=path.name, reason=reason)

        def write_reason(stem: Path) -> None:
            partial = stem.with_name(f".{stem.name}.error.txt.tmp")
            partial.write_text(reason.rstrip("\n") + "\n", encoding="utf-8")
            os.replace(partial, stem.with_name(stem.name + ".error.txt"))

        try:
            self._file_away(path, REJECTED, write_reason)
        except OSError as exc:
            log.error("could not move the rejected file", file=path.name, error=type(exc).__name__)
        return Event("rejected", path.name, detail=reason)

    def _file_away(self, path: Path, folder: str, write_beside: Callable[[Path], None]) -> Path:
        """Write the companion (report or reason) under a free name in DIR/folder, then move the file
        and its own TOML there; the file's new path."""
        into = self.directory / folder
        into.mkdir(exist_ok=True)
        stem = _free_stem(into, path)
        write_beside(stem)
        moved = stem.with_name(stem.name + path.suffix)
        os.replace(path, moved)
        toml = path.with_suffix(".toml")
        if toml.is_file():
            os.replace(toml, stem.with_name(stem.name + ".toml"))
        return moved


# -- settings -------------------------------------------------------------------------------
def read_settings(path: Path) -> dict[str, Any]:
    """The `send` fields from a TOML file, or ConfigError saying in one sentence what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name} is not valid TOML ({exc}).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} cannot be read ({type(exc).__name__}).") from None
    unknown = sorted(set(data) - set(SETTINGS_FIELDS))
    if unknown:
        raise ConfigError(f"{path.name} has unknown settings ({', '.join(unknown)}); the settings are "
                          f"{', '.join(SETTINGS_FIELDS)}.")
    for name, value in data.items():
        kinds = SETTINGS_FIELDS[name]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)):
            wanted = "a header or a list of headers" if list in kinds else KIND_NAMES[float if float in kinds
                                                                                     else kinds[0]]
            raise ConfigError(f"{path.name}: {name} must be {wanted}, not {type(value).__name__}.")
    for name in ("phone_column", "email_column"):  # one header or several, in order, as `send` takes
        if name in data:
            value = data.pop(name)
            data[f"{name}s"] = (value,) if isinstance(value, str) else tuple(value)
    missing = [name for name in REQUIRED_SETTINGS if not data.get(name)]
    if missing:
        raise ConfigError(f"{path.name} has no {' and no '.join(missing)}.")
    return data


def canonical_settings(campaign: Campaign) -> str:
    """The settings that shape a run, as canonical JSON (not the sandbox's URL, which changes per start)."""
    defaults = {f.name: f.default for f in dataclass_fields(Campaign)}
    chosen = {k: v for k, v in asdict(campaign).items() if k != "api_url" and v != defaults.get(k)}
    return json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- small helpers --------------------------------------------------------------------------
def _is_recipient_file(entry: os.DirEntry) -> bool:
    name = entry.name.lower()
    return (not name.startswith(".") and name.endswith(RECIPIENT_SUFFIXES)
            and not name.endswith(IGNORED_SUFFIXES) and entry.is_file())


def _stat_or_none(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _free_stem(folder: Path, path: Path) -> Path:
    """folder/NAME, or folder/NAME.2, NAME.3 … when something of that name is already there."""
    stem, n = folder / path.stem, 1
    while any(stem.with_name(stem.name + s).exists() for s in (path.suffix, ".report.csv", ".error.txt", ".toml")):
        n += 1
        stem = folder / f"{path.stem}.{n}"
    return stem


def _outcome(status: dict) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status["counts"].items()))
    reason = f" ({status['reason']})" if status.get("reason") else ""
    return f"{status['state']}{reason}: {counts or 'no rows'}"


def _paren(detail: str) -> str:
    return f" ({detail})" if detail else ""

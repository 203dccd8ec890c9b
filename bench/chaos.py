"""Chaos campaign: many small runs under random faults, each checked against the sandbox's request log.

In the spirit of Jepsen's queue checkers. Prints figures and violations; asserts nothing; exit code 0
whatever happened (it is a benchmark). `tests/test_chaos.py` runs a seeded handful and asserts.

    python -m bench.chaos                         # 200 runs, seed 1, 3 runs in flight, fresh cluster per 25
    python -m bench.chaos --quick                 # 12 small runs (a couple of minutes)
    python -m bench.chaos --runs 50 --seed 7 --parallel 2
    python -m bench.chaos --seeds 123456,98765    # replay exactly these run schedules
    python -m bench.chaos --json out.json         # also write the results as JSON

What one run is (all drawn from `random.Random(run_seed)`, so a seed reproduces a schedule; the
timing of course differs): a channel (sms or email), 10 to 250 valid recipients (plus invalid and
duplicate rows), an optional per-run `rate`, a fraction of recipients scripted in the sandbox with a
fault step (HTTP 429 with a long Retry-After, 503, 500/502/504, a dropped connection, a garbage 200,
slow answers below and above the request timeout, errors 602 once/always, 605, 999 then ok), and 0-3
infrastructure or operator faults, each fired when a drawn fraction of the run's requests has reached
the sandbox (a condition, never a fixed sleep; deadlines everywhere):

    worker_kill   SIGKILL a worker's whole process group, start a new worker
    child_kill    SIGKILL one pool child of a worker (Celery respawns it)
    redis_kill    SIGKILL redis-server, wait a moment, restart it (same port, same dir, AOF always)
    lost_message  one of the run's batch messages never reaches the broker (dropped at publish, as a
                  broker restart or an acked failure would lose it; the stall healer must find its rows)
    pause         pause the run, resume it a moment later
    cancel        cancel the run
    retry         `Runs.retry` at a random moment, or once the run is done
    suppress      add a few of the run's not-yet-delivered recipients to the suppression list

The cluster (private redis-server with AOF on a fixed port, the sandbox with one scenario covering
every run it will see, two `dispatch worker` processes of 2 pool children each) is shared by up to
`--per-cluster` runs, `--parallel` of them in flight at once; crashes are cluster events, so they
count for every run in flight when they happen. A supervisor thread restarts any worker that exits by
itself (as systemd or `restart: always` would), counts it as a crash (`worker_exit`) and lists it in
the summary: that is a finding in itself.

The checker, per run (report from `Runs.iter_report`/`Runs.status`, ground truth from the request
log; delivered = result "ok" or "drop"):

    missing_rows / extra_rows   the report holds exactly the input's rows
    not_final                   every row has a final status
    wrong_status                invalid/duplicate input rows are reported as such
    double_delivery             nobody delivered twice
    sent_not_delivered          a `sent` row was delivered (exactly once)
    lost_delivery               a delivered row ends neither `sent` nor `uncertain`
    unexplained_uncertain       `uncertain` only where a request may really have left: the log shows an
                                answer that cannot be trusted (drop, garbage, 500/502/504, an answer slower
                                than the request timeout), or a crash (worker, child or Redis kill) happened
                                while the run was open, and then rows uncertain with no request at all
                                are at most crashes x (worker processes x concurrency + claim chunk 100)
    suppressed_delivered        `suppressed` rows never delivered; rows still unclaimed when suppressed late
                                (pending/retry_wait read right after the SADD) never delivered afterwards
    delivered_while_paused      no request arrives between pause + 1 s and resume
    delivered_after_cancel      no request arrives after cancel + 1 s
    unexpected_abort            nothing in these scenarios may abort a run
    stuck                       the run is done (every row final, state completed/cancelled/aborted)
                                within --bound seconds of its last fault
    harness_error               the bench itself failed on this run (not a product violation)

Knobs the workers get: DISPATCH_VISIBILITY_TIMEOUT 8, DISPATCH_STALL_TIMEOUT 3 (the sweeper that
republishes open rows no live batch holds, once it exists), DISPATCH_REQUEST_TIMEOUT 2, a fast retry
policy (3 attempts, 0.05-0.3 s), DISPATCH_BATCH_SIZE 40, DISPATCH_CONCURRENCY 4.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis

from worker.engine import CLAIM_CHUNK
from worker.redis_server import redis_server_binary, server_config

ROOT = Path(__file__).resolve().parent.parent
DIRECTORY = "dir_12345"
FINAL_STATES = ("completed", "cancelled", "aborted")
UNTRUSTED_RESULTS = frozenset({"drop", "garbage", "http_500", "http_502", "http_504"})
DELIVERED = frozenset({"ok", "drop"})
CRASHES = ("worker_kill", "child_kill", "redis_kill", "worker_exit")
REACTION = 1.0  # seconds pause / cancel may take to reach every worker (README: within a second)

POLICY = """[retry]
max_attempts = 3
base_delay = 0.05
max_delay = 0.3
"""

# --- what can happen to one recipient in the sandbox: weight, steps(rng) --------------------------
ROW_FAULTS: dict[str, tuple[float, Callable[[random.Random], list[dict]]]] = {
    "http_429": (1, lambda r: [{"http": 429, "retry_after": r.choice([2, 4])}, {"ok": True}]),
    "http_503": (2, lambda r: [{"http": 503}, {"ok": True}]),
    "http_5xx": (2, lambda r: [{"http": r.choice([500, 502, 504])}, {"ok": True}]),
    "drop": (2, lambda r: [{"drop": True}]),
    "garbage": (2, lambda r: [{"garbage": True}]),
    "slow": (2, lambda r: [{"delay_ms": r.choice([300, 800]), "ok": True}]),
    "slow_timeout": (1, lambda r: [{"delay_ms": 2600, "ok": True}]),  # > DISPATCH_REQUEST_TIMEOUT
    "error_602_once": (2, lambda r: [{"error": 602}, {"ok": True}]),
    "error_602": (1, lambda r: [{"error": 602}]),
    "error_605": (1, lambda r: [{"error": 605}]),
    "error_999": (1, lambda r: [{"error": 999}, {"ok": True}]),
}
ROW_FAULT_CAPS = {"http_429": 1, "slow_timeout": 3}

# --- infrastructure and operator faults: weight ---------------------------------------------------
FAULTS = {"worker_kill": 2, "child_kill": 2, "redis_kill": 1.5, "lost_message": 1.5, "pause": 2,
          "cancel": 1, "retry": 1.5, "suppress": 1.5}


@dataclass(frozen=True)
class Config:
    workers: int = 2  # dispatch worker processes (each its own process group)
    processes: int = 2  # pool children per worker
    concurrency: int = 4  # DISPATCH_CONCURRENCY: requests in flight per child
    latency_ms: int = 15  # sandbox latency on every answer
    visibility_timeout: int = 8
    stall_timeout: int = 3
    request_timeout: float = 2.0
    batch_size: int = 40
    bound: float = 60.0  # seconds after its last fault within which a run must be done
    trigger_timeout: float = 20.0  # seconds a fault waits for its trigger before firing anyway
    sizes: tuple[int, ...] = (10, 30, 60, 100, 150, 250)
    max_faults: int = 3

    @property
    def processes_total(self) -> int:
        return self.workers * self.processes

    def env(self, redis_url: str, api_url: str, home: Path, policy: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COUPONTOOLS_", "DISPATCH_"))}
        env.update({
            "REDIS_URL": redis_url, "DISPATCH_HOME": str(home), "DISPATCH_POLICY": str(policy),
            "COUPONTOOLS_API_URL": api_url, "COUPONTOOLS_CLIENT_ID": "sandbox",
            "COUPONTOOLS_CLIENT_SECRET": "sandbox",
            "DISPATCH_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
            "DISPATCH_STALL_TIMEOUT": str(self.stall_timeout),
            "DISPATCH_CONCURRENCY": str(self.concurrency), "DISPATCH_BATCH_SIZE": str(self.batch_size),
            "DISPATCH_REQUEST_TIMEOUT": str(self.request_timeout),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        })
        return env


QUICK = Config(sizes=(10, 30, 60, 100), bound=40.0, trigger_timeout=15.0)


# ==================================================================================================
# Schedules
# ==================================================================================================
@dataclass(frozen=True)
class Fault:
    kind: str
    at: float | None  # fraction of the run's valid rows requested from the sandbox; None: once done
    param: float = 0.0  # pause length / Redis downtime (s); number of addresses to suppress

    def label(self) -> str:
        return f"{self.kind}@{'done' if self.at is None else f'{self.at:.2f}'}"


@dataclass(frozen=True)
class Schedule:
    seed: int
    channel: str
    valid: int
    rate: float
    invalid: int
    duplicates: int
    row_faults: dict[int, tuple[str, tuple]]  # valid index → (kind, steps as JSON text tuple)
    faults: tuple[Fault, ...]


def draw_schedule(seed: int, config: Config = Config()) -> Schedule:
    """Everything about one run, from its seed alone."""
    rng = random.Random(seed)
    channel = rng.choice(["sms", "email"])
    valid = rng.choice(config.sizes)
    rate = 0.0 if rng.random() < 0.35 else round(max(10.0, valid / rng.uniform(2, 5)), 1)
    invalid = rng.choice([0, 0, 1, 2])
    duplicates = rng.choice([0, 0, 1])
    fraction = rng.choice([0.0, 0.05, 0.1, 0.2])
    kinds, weights = zip(*[(k, w) for k, (w, _) in ROW_FAULTS.items()])
    row_faults: dict[int, tuple[str, tuple]] = {}
    used: Counter = Counter()
    for i in range(valid):
        if rng.random() < fraction:
            kind = rng.choices(kinds, weights)[0]
            if used[kind] >= ROW_FAULT_CAPS.get(kind, valid):
                continue
            used[kind] += 1
            row_faults[i] = (kind, tuple(json.dumps(s, sort_keys=True) for s in ROW_FAULTS[kind][1](rng)))
    count = rng.choices(range(config.max_faults + 1), [2, 4, 3, 1][:config.max_faults + 1])[0]
    names, fweights = zip(*FAULTS.items())
    faults: list[Fault] = []
    for _ in range(count):
        kind = rng.choices(names, fweights)[0]
        if kind == "cancel" and any(f.kind in ("cancel", "retry") for f in faults):
            continue
        if kind == "retry" and any(f.kind == "cancel" for f in faults):
            continue
        faults.append(_draw_fault(kind, rng))
    return Schedule(seed, channel, valid, rate, invalid, duplicates, row_faults, tuple(faults))


def _draw_fault(kind: str, rng: random.Random) -> Fault:
    if kind == "lost_message":  # dropped when the run is submitted (see Driver._submit)
        return Fault(kind, 0.0)
    if kind == "retry":
        return Fault(kind, None if rng.random() < 0.5 else round(rng.uniform(0.3, 0.9), 2))
    at = round(rng.uniform(0.1, 0.8), 2)
    if kind == "pause":
        return Fault(kind, at, round(rng.uniform(0.3, 2.0), 2))
    if kind == "redis_kill":
        return Fault(kind, at, round(rng.uniform(0.2, 2.0), 2))
    if kind == "suppress":
        return Fault(kind, at, rng.randint(1, 5))
    return Fault(kind, at)


@dataclass
class Row:
    row: int  # 1-based input row
    given: str
    address: str  # normalised address ('' for invalid rows)
    kind: str  # plain | a ROW_FAULTS kind | invalid | duplicate
    steps: tuple[dict, ...] = ()


@dataclass
class Plan:
    """A schedule placed in a cluster: its run ID, its rows and their addresses (unique per cluster)."""

    schedule: Schedule
    slot: int
    run_id: str
    rows: list[Row]

    @property
    def channel(self) -> str:
        return self.schedule.channel

    @property
    def valid_rows(self) -> list[Row]:
        return [r for r in self.rows if r.address and r.kind not in ("invalid", "duplicate")]

    def records(self) -> list[dict[str, str]]:
        key = "phone" if self.channel == "sms" else "email"
        return [{key: r.given, "first_name": f"R{r.row}"} for r in self.rows]

    def rules(self) -> list[dict]:
        return [{"channel": self.channel, "match": {"exact": r.address}, "steps": list(r.steps)}
                for r in self.valid_rows if r.steps]


def address(channel: str, slot: int, i: int) -> str:
    if channel == "sms":  # +447911000000…+447911299999 are valid GB mobiles: slot < 300, i < 1000
        return f"+447911{slot:03d}{i:03d}"
    return f"c{slot}r{i}@example.com"


def place(schedule: Schedule, slot: int, tag: str) -> Plan:
    rng = random.Random(schedule.seed * 7919 + 1)
    ch = schedule.channel
    rows: list[Row] = []
    for i in range(schedule.valid):
        kind, steps = schedule.row_faults.get(i, ("plain", ()))
        addr = address(ch, slot, i)
        rows.append(Row(0, addr, addr, kind, tuple(json.loads(s) for s in steps)))
    for j in range(schedule.invalid):
        given = f"not a number {j}" if ch == "sms" else f"nobody-at-{slot}-{j}"
        rows.insert(rng.randrange(len(rows) + 1), Row(0, given, "", "invalid"))
    for j in range(schedule.duplicates):
        original = rng.randrange(schedule.valid)
        addr = address(ch, slot, original)
        given = ("0" + addr[3:7] + " " + addr[7:]) if ch == "sms" else addr.upper()
        rows.append(Row(0, given, addr, "duplicate"))
    for n, row in enumerate(rows, 1):
        row.row = n
    return Plan(schedule, slot, f"chaos_{tag}_{slot:03d}_{schedule.seed}", rows)


# ==================================================================================================
# Infrastructure
# ==================================================================================================
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisProcess:
    """A private redis-server (AOF, fsync always, noeviction) on a fixed port: SIGKILL and restart."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "redis.conf").write_text(server_config(directory, port, daemonize=False))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.process = subprocess.Popen([redis_server_binary(), str(self.directory / "redis.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.RedisError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited ({self.process.returncode}); see "
                                       f"{self.directory / 'redis.log'}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout:.0f} s")
            time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Worker:
    """A `dispatch worker` in its own process group (stderr to a file, never a pipe that can fill)."""

    def __init__(self, env: dict[str, str], name: str, processes: int, log: Path) -> None:
        self.name, self.log_path = name, log
        self.stderr = open(log, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tasks", "worker", "--loglevel", "WARNING", "--concurrency",
             str(processes), "-n", f"{name}@%h"], env=env, stdout=subprocess.DEVNULL,
            stderr=self.stderr, start_new_session=True, cwd=ROOT)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if not self.stderr.closed:
            self.stderr.close()


def _last_error(log: Path) -> str:
    """The last line of a worker's stderr that names an error (what killed it, usually)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "?"
    hits = [line for line in lines if "Unrecoverable" in line or "Error" in line and not line.startswith("{")]
    return (hits[-1] if hits else (lines[-1] if lines else "")).strip()[:200]


class RequestLog:
    """The sandbox's request log, read incrementally; send lines indexed by recipient and by run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.by_recipient: dict[str, list[dict]] = defaultdict(list)
        self.owner: dict[str, str] = {}  # recipient → run ID
        self.per_run: Counter = Counter()
        self.lock = threading.Lock()

    def register(self, plan: Plan) -> None:
        with self.lock:
            for row in plan.valid_rows:
                self.owner[row.address] = plan.run_id

    def poll(self) -> None:
        with self.lock:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(self.offset)
                    data = handle.read()
            except FileNotFoundError:
                return
            self.offset += len(data)
            *lines, self.partial = (self.partial + data).split(b"\n")
            for raw in lines:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if not str(line.get("path", "")).startswith("/v3/send/") or not line.get("recipient"):
                    continue
                self.by_recipient[line["recipient"]].append(line)
                run_id = self.owner.get(line["recipient"])
                if run_id:
                    self.per_run[run_id] += 1

    def requests(self, run_id: str) -> int:
        self.poll()
        return self.per_run[run_id]

    def lines(self, recipient: str) -> list[dict]:
        with self.lock:
            return list(self.by_recipient.get(recipient, ()))


class Stopped(Exception):
    """The campaign is being torn down (Ctrl-C)."""


TRANSIENT: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                              OSError)


def _transient() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError

    from worker.errors import DispatchError

    return TRANSIENT + (OperationalError, DispatchError)


class Cluster:
    """Redis + sandbox + workers for a group of runs; crash faults are recorded as cluster events."""

    def __init__(self, directory: Path, port: int, scenario: dict, config: Config,
                 stop: threading.Event) -> None:
        self.directory, self.config, self.stop_event = directory, config, stop
        directory.mkdir(parents=True, exist_ok=True)
        self.redis = RedisProcess(directory / "redis", port)
        self.log = RequestLog(directory / "requests.log")
        self.scenario = scenario
        self.policy = directory / "policy.toml"
        self.policy.write_text(POLICY)
        self.workers: list[Worker] = []
        self.generation = 0
        self.events: list[tuple[float, str]] = []  # (time, crash kind)
        self.exits: list[str] = []  # workers that exited by themselves (not killed by us)
        self.lock = threading.Lock()  # one infrastructure fault at a time
        self.stack = contextlib.ExitStack()
        self.closing = False
        self.api_url = ""
        self.env: dict[str, str] = {}

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        from worker.sandbox import running_sandbox

        self.redis.start()
        self.api_url = self.stack.enter_context(running_sandbox(self.scenario, request_log=self.log.path))
        self.env = self.config.env(self.redis.url, self.api_url, self.directory / "home", self.policy)
        for _ in range(self.config.workers):
            self.start_worker()
        self.wait_for_workers()
        threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True).start()

    def _supervise(self) -> None:
        """Like a process supervisor (systemd, `restart: always`): a worker that exited by itself is
        recorded (a crash for the checker, and a finding) and replaced."""
        while not self.stop_event.wait(0.5) and not self.closing:
            with self.lock:
                if self.closing:
                    return
                for worker in [w for w in self.workers if not w.alive]:
                    self.events.append((time.time(), "worker_exit"))
                    self.exits.append(f"{worker.name} exited with {worker.process.returncode}: "
                                      f"{_last_error(worker.log_path)}")
                    worker.kill()
                    self.workers.remove(worker)
                    self.start_worker()

    def start_worker(self) -> Worker:
        self.generation += 1
        worker = Worker(self.env, f"chaos{self.generation}", self.config.processes,
                        self.directory / f"worker{self.generation}.log")
        self.workers.append(worker)
        return worker

    def wait_for_workers(self, timeout: float = 60.0) -> None:
        from worker import keys

        client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
        deadline = time.monotonic() + timeout
        while client.zcard(keys.WORKERS) < self.config.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start within {timeout:.0f} s; see {self.directory}")
            if self.stop_event.is_set():
                raise Stopped
            time.sleep(0.1)
        client.close()

    def record(self, kind: str) -> float:
        now = time.time()
        with self.lock:
            self.events.append((now, kind))
        return now

    def crashes_between(self, start: float, end: float) -> list[str]:
        return [kind for t, kind in self.events if start <= t <= end]

    # -- faults ---------------------------------------------------------------------------------
    def kill_worker(self, rng: random.Random) -> str:
        with self.lock:
            alive = [w for w in self.workers if w.alive]
            if not alive:
                return ""
            victim = rng.choice(alive)
            victim.kill()
            self.events.append((time.time(), "worker_kill"))
            self.workers.remove(victim)
            self.start_worker()
            return victim.name

    def kill_child(self, rng: random.Random) -> str:
        with self.lock:
            candidates = [(w, c) for w in self.workers if w.alive for c in w.children()]
            if not candidates:
                return ""
            worker, child = rng.choice(candidates)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            self.events.append((time.time(), "child_kill"))
            return f"{worker.name}/{child}"

    def kill_redis(self, down: float) -> str:
        with self.lock:
            self.redis.kill()
            self.events.append((time.time(), "redis_kill"))
            time.sleep(down)  # the outage itself: Redis stays down this long
            self.redis.start()
            return f"down {down:.1f}s"

    def close(self) -> None:
        self.closing = True
        with self.lock:
            workers = list(self.workers)
        for worker in workers:
            worker.kill()
        self.workers = []
        self.stack.close()
        self.redis.kill()


# ==================================================================================================
# Driving one run
# ==================================================================================================
@dataclass
class RunResult:
    plan: Plan
    t_start: float = 0.0
    t_end: float = 0.0
    t_last_fault: float = 0.0
    done: bool = False
    status: dict = field(default_factory=dict)
    injected: list[tuple[str, float, str]] = field(default_factory=list)  # kind, time, detail
    skipped: list[str] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)
    cancelled_at: float | None = None
    suppressions: list[tuple[float, set[str]]] = field(default_factory=list)  # time, must-never-deliver
    violations: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    crashes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


class Driver:
    """Submits one run, fires its faults at their triggers, waits for the end, then checks it."""

    def __init__(self, cluster: Cluster, plan: Plan) -> None:
        self.cluster, self.plan, self.config = cluster, plan, cluster.config
        self.runs: Any = None
        self.rng = random.Random(plan.schedule.seed * 31 + 7)
        self.result = RunResult(plan)
        self.submitted = 0.0

    def _connect(self) -> Any:
        from worker.redis_server import connect
        from worker.runs import Runs

        return Runs(connect(self.cluster.redis.url), batch_size=self.config.batch_size)

    def retrying(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        transient = _transient()
        while True:
            try:
                return fn()
            except transient:
                if time.monotonic() > deadline:
                    raise
                self._sleep(0.2)

    def _sleep(self, seconds: float) -> None:
        if self.cluster.stop_event.wait(seconds):
            raise Stopped

    def wait_for(self, predicate: Callable[[], bool], timeout: float, every: float = 0.03) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return False
            self._sleep(every)

    def status(self) -> dict:
        return self.retrying(lambda: self.runs.status(self.plan.run_id))

    def is_done(self) -> bool:
        status = self.status()
        return bool(status["done"]) and status["state"] in FINAL_STATES

    def run(self) -> RunResult:
        res, plan = self.result, self.plan
        res.t_start = time.time()
        try:
            self.runs = self.retrying(self._connect)
            # a batch message sits in the broker list only until a worker takes it: hunt for one while
            # the run is being submitted, on a thread of its own
            lost = sum(1 for f in plan.schedule.faults if f.kind == "lost_message")
            self._submit(lost)
            self.submitted = time.monotonic()
            timed = sorted((f for f in plan.schedule.faults if f.at is not None and f.kind != "lost_message"),
                           key=lambda f: f.at)
            valid = len(plan.valid_rows)
            for fault in timed:
                target = max(1, math.ceil(fault.at * valid))
                self.wait_for(lambda: self.cluster.log.requests(plan.run_id) >= target or self.is_done(),
                              self.config.trigger_timeout)
                if self.is_done() and fault.kind != "retry":
                    res.skipped.append(fault.kind)
                    continue
                self.fire(fault)
            res.t_last_fault = time.time()
            res.done = self.wait_for(self.is_done, self.config.bound, every=0.1)
            for fault in (f for f in plan.schedule.faults if f.at is None):
                if not res.done:
                    res.skipped.append(fault.kind)
                    continue
                self.fire(fault)
                res.t_last_fault = time.time()
                res.done = self.wait_for(self.is_done, self.config.bound, every=0.1)
            res.t_end = time.time()
            # requests still inside the sandbox (slow steps) are logged only once answered: let them land
            slowest = max((st.get("delay_ms", 0) for r in plan.valid_rows for st in r.steps), default=0)
            self._sleep(slowest / 1000 + self.config.latency_ms / 1000 + 0.3)
            res.status = self.status()
            report = self.retrying(lambda: list(self.runs.iter_report(plan.run_id)))
            self.cluster.log.poll()
            res.crashes = self.cluster.crashes_between(res.t_start, res.t_end)
            res.violations = check(plan, res, report, self.cluster.log, self.config)
        except Stopped:
            raise
        except Exception as exc:  # the bench failed on this run: say so, keep going
            res.t_end = res.t_end or time.time()
            res.error = f"{type(exc).__name__}: {exc}"
        return res

    def _submit(self, lose: int) -> None:
        """Submit the run as `tasks.submit` does; the first `lose` batch messages never reach the broker
        (as if lost in a broker restart, or with a task that failed and was acked)."""
        from tasks.batches import create_run_from_records, publish_batch

        plan = self.plan
        self.cluster.log.register(plan)
        dropped = [0]

        def lossy(run_id: str, rows: list[int]) -> None:
            if dropped[0] < lose:
                dropped[0] += 1
                self.result.injected.append(("lost_message", time.time(), f"batch of {len(rows)} rows lost"))
                return
            publish_batch(run_id, rows)

        self.retrying(lambda: create_run_from_records(
            plan.records(), channel=plan.channel, directory=DIRECTORY, body="chaos",
            subject="chaos", region="GB", run_id=plan.run_id, rate=plan.schedule.rate, publish=lossy),
            timeout=60)
        self.result.skipped.extend(["lost_message"] * (lose - dropped[0]))

    def fire(self, fault: Fault) -> None:
        from tasks import publish_batch

        res, run_id = self.result, self.plan.run_id
        now = time.time()
        detail = ""
        kind = fault.kind
        if kind == "worker_kill":
            detail = self.cluster.kill_worker(self.rng)
        elif kind == "child_kill":
            detail = self.cluster.kill_child(self.rng)
        elif kind == "redis_kill":
            detail = self.cluster.kill_redis(fault.param)
        elif kind == "pause":
            if self.retrying(lambda: self.runs.pause(run_id)):
                self._sleep(fault.param)  # the pause itself lasts this long
                resumed = time.time()
                self.retrying(lambda: self.runs.resume(run_id, publish_batch))
                res.pauses.append((now, resumed))
                detail = f"{resumed - now:.1f}s"
        elif kind == "cancel":
            if self.retrying(lambda: self.runs.cancel(run_id)):
                res.cancelled_at = now
                detail = "cancelled"
        elif kind == "retry":
            detail = f"{self.retrying(lambda: self.runs.retry(run_id, publish_batch))} rows requeued"
        elif kind == "suppress":
            detail = self._suppress_late(int(fault.param))
        if detail:
            res.injected.append((kind, now, detail))
        else:
            res.skipped.append(kind)

    def _suppress_late(self, count: int) -> str:
        """Suppress a few not-yet-delivered plain recipients; rows still unclaimed right after the SADD
        must never be delivered."""
        plan, log = self.plan, self.cluster.log
        log.poll()
        candidates = [r for r in plan.valid_rows if r.kind == "plain" and not log.lines(r.address)]
        if not candidates:
            return ""
        chosen = self.rng.sample(candidates, min(count, len(candidates)))
        now = time.time()
        self.retrying(lambda: self.runs.suppress(plan.channel, [r.address for r in chosen]))
        report = {r.row: r.status for r in self.retrying(lambda: list(self.runs.iter_report(plan.run_id)))}
        strict = {r.address for r in chosen if report.get(r.row) in ("pending", "retry_wait")}
        self.result.suppressions.append((now, strict))
        return f"{len(chosen)} suppressed, {len(strict)} unclaimed"


# ==================================================================================================
# The checker
# ==================================================================================================
def check(plan: Plan, res: RunResult, report: list, log: RequestLog, config: Config) -> list[tuple[str, str]]:
    """Violations of one finished (or stuck) run, by kind, with a short detail each."""
    found: list[tuple[str, str]] = []
    v = found.append
    status = res.status
    latency = config.latency_ms / 1000

    # (f) final state within the bound
    if not res.done:
        v(("stuck", f"state {status.get('state')} counts {status.get('counts')} "
                    f"{config.bound:.0f}s after the last fault"))
    if status.get("state") == "aborted":
        v(("unexpected_abort", status.get("reason", "")))

    # (a) exactly the input's rows, each with one final status
    from worker.statuses import FINAL

    by_row = {r.row: r for r in report}
    expected = {r.row for r in plan.rows}
    if missing := expected - set(by_row):
        v(("missing_rows", f"{len(missing)} rows, e.g. {sorted(missing)[:5]}"))
    if extra := set(by_row) - expected:
        v(("extra_rows", f"{len(extra)} rows, e.g. {sorted(extra)[:5]}"))
    if len(report) != len(by_row):
        v(("extra_rows", f"{len(report) - len(by_row)} row numbers reported twice"))
    open_rows = Counter(r.status for r in report if r.status not in FINAL)
    if open_rows:
        v(("not_final", f"{sum(open_rows.values())} rows {dict(open_rows)}"))
    for row in plan.rows:
        got = by_row.get(row.row)
        if got is None:
            continue
        if row.kind in ("invalid", "duplicate") and got.status != row.kind:
            v(("wrong_status", f"row {row.row} ({row.kind}) is {got.status}"))

    # per recipient ground truth
    crashes = len(res.crashes)
    bound = crashes * (config.processes_total * config.concurrency + CLAIM_CHUNK)
    uncertain_no_request = 0
    for row in plan.valid_rows:
        got = by_row.get(row.row)
        lines = log.lines(row.address)
        delivered = [line for line in lines if line["result"] in DELIVERED]
        arrivals = [(_arrival(row, lines, line, latency), line) for line in delivered]
        state = got.status if got else "missing"
        who = f"row {row.row} {row.address} ({row.kind})"
        # (b) nobody delivered twice
        if len(delivered) > 1:
            v(("double_delivery", f"{who} delivered {len(delivered)}x, status {state}"))
        # (c) sent means delivered (once)
        if state == "sent" and not delivered:
            v(("sent_not_delivered", f"{who}: no delivery in the log"))
        if delivered and state not in ("sent", "uncertain"):
            v(("lost_delivery", f"{who} delivered but reported {state}"))
        # (d) uncertain only where a request may really have left
        if state == "uncertain":
            untrusted = any(line["result"] in UNTRUSTED_RESULTS for line in lines) or (
                lines and row.kind == "slow_timeout")
            if not untrusted:
                if not crashes:
                    v(("unexplained_uncertain", f"{who}: {len(lines)} requests, all answered "
                                                f"{[line['result'] for line in lines]}, no crash"))
                elif not lines:
                    uncertain_no_request += 1
        # (e) suppressed rows never delivered
        if state == "suppressed" and delivered:
            v(("suppressed_delivered", f"{who} is suppressed but was delivered"))
        for when, strict in res.suppressions:
            if row.address in strict:
                late = [a for a, _ in arrivals if a > when]
                if late:
                    v(("suppressed_delivered", f"{who} suppressed late while unclaimed, delivered "
                                               f"{late[0] - when:.2f}s later, status {state}"))
        # (g) nothing leaves after a cancel (+ reaction time); nothing while paused
        if res.cancelled_at is not None:
            after = [a - res.cancelled_at for a, _ in arrivals if a > res.cancelled_at + REACTION]
            if after:
                v(("delivered_after_cancel", f"{who} delivered {after[0]:.2f}s after the cancel"))
        for paused, resumed in res.pauses:
            inside = [a - paused for a, _ in arrivals if paused + REACTION < a < resumed]
            if inside:
                v(("delivered_while_paused", f"{who} delivered {inside[0]:.2f}s into a "
                                             f"{resumed - paused:.1f}s pause"))
    if uncertain_no_request > bound:
        v(("unexplained_uncertain", f"{uncertain_no_request} uncertain rows never requested, more than "
                                    f"{bound} that {crashes} crash(es) could hold in flight"))
    return found


def _arrival(row: Row, lines: list[dict], line: dict, latency: float) -> float:
    """When the request reached the sandbox: the log's ts is written after the latency and the step's
    delay (the n-th request of a recipient gets the n-th step)."""
    delay = 0.0
    if row.steps:
        n = next(i for i, other in enumerate(lines) if other is line)
        delay = row.steps[min(n, len(row.steps) - 1)].get("delay_ms", 0) / 1000
    return float(line["ts"]) - latency - delay


# ==================================================================================================
# Campaign
# ==================================================================================================
@dataclass
class Summary:
    results: list[RunResult] = field(default_factory=list)
    wall: float = 0.0
    clusters: int = 0
    interrupted: bool = False
    exits: list[str] = field(default_factory=list)  # workers that exited by themselves

    @property
    def violations(self) -> dict[str, list[int]]:
        """Violation kind → seeds of the runs that showed it."""
        out: dict[str, list[int]] = defaultdict(list)
        for res in self.results:
            for kind in sorted({k for k, _ in res.violations}):
                out[kind].append(res.plan.schedule.seed)
        return dict(out)

    @property
    def harness_errors(self) -> list[tuple[int, str]]:
        return [(r.plan.schedule.seed, r.error) for r in self.results if r.error]

    def table(self) -> str:
        runs = len(self.results)
        rows = sum(len(r.plan.rows) for r in self.results)
        channels = Counter(r.plan.channel for r in self.results)
        injected = Counter(kind for r in self.results for kind, _, _ in r.injected)
        skipped = Counter(kind for r in self.results for kind in r.skipped)
        row_faults = Counter(row.kind for r in self.results for row in r.plan.valid_rows if row.kind != "plain")
        counts: Counter = Counter()
        for r in self.results:
            counts.update(r.status.get("counts", {}))
        kinds = Counter(kind for r in self.results for kind, _ in r.violations)
        bad_runs = sum(1 for r in self.results if r.violations)
        durations = sorted(r.duration for r in self.results) or [0.0]
        lines = [
            "", "=" * 100, "SUMMARY",
            f"runs {runs} ({dict(channels)}) on {self.clusters} cluster(s); rows {rows}; "
            f"wall {self.wall:.0f}s; run duration median {durations[len(durations) // 2]:.1f}s, "
            f"max {durations[-1]:.1f}s" + ("; INTERRUPTED" if self.interrupted else ""),
            f"final statuses: {dict(counts.most_common())}",
            "", f"{'faults injected':<28}{'count':>7}{'skipped':>9}"]
        for kind in FAULTS:
            lines.append(f"  {kind:<26}{injected[kind]:>7}{skipped[kind]:>9}")
        lines += ["", f"{'sandbox-scripted recipients':<28}{'count':>7}"]
        for kind in ROW_FAULTS:
            lines.append(f"  {kind:<26}{row_faults[kind]:>7}")
        lines += ["", f"{'violations':<28}{'count':>7}{'runs':>7}  seeds"]
        by_seed = self.violations
        for kind, n in kinds.most_common():
            seeds = by_seed[kind]
            shown = ",".join(str(s) for s in seeds[:8]) + (" …" if len(seeds) > 8 else "")
            lines.append(f"  {kind:<26}{n:>7}{len(seeds):>7}  {shown}")
        if not kinds:
            lines.append("  none")
        lines.append(f"runs with violations: {bad_runs}/{runs}")
        if self.exits:
            lines.append(f"!! workers that exited by themselves (restarted by the bench's supervisor; counted "
                         f"as crashes): {len(self.exits)}")
            for line in self.exits[:10]:
                lines.append(f"  {line}")
        if self.harness_errors:
            lines.append(f"harness errors (bench failures, not product violations): {len(self.harness_errors)}")
            for seed, error in self.harness_errors[:10]:
                lines.append(f"  seed {seed}: {error}")
        lines.append("=" * 100)
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "wall": self.wall, "clusters": self.clusters, "interrupted": self.interrupted,
            "violations": self.violations, "harness_errors": self.harness_errors, "worker_exits": self.exits,
            "runs": [{
                "seed": r.plan.schedule.seed, "run": r.plan.run_id, "channel": r.plan.channel,
                "rows": len(r.plan.rows), "rate": r.plan.schedule.rate, "state": r.status.get("state"),
                "counts": r.status.get("counts"), "duration": round(r.duration, 2),
                "faults": [f"{k}: {d}" for k, _, d in r.injected], "skipped": r.skipped,
                "crashes": r.crashes, "violations": r.violations, "error": r.error,
            } for r in self.results],
        }


def run_line(index: int, res: RunResult) -> str:
    plan, s = res.plan, res.plan.schedule
    faults = ",".join(f"{k}" for k, _, _ in res.injected) or "-"
    if res.skipped:
        faults += f" (skipped {','.join(res.skipped)})"
    scripted = len([r for r in plan.valid_rows if r.kind != "plain"])
    counts = " ".join(f"{k}={n}" for k, n in sorted(res.status.get("counts", {}).items()))
    head = (f"[{index:>3}] seed={s.seed:<7} {plan.run_id:<28} {plan.channel:<5} rows={len(plan.rows):<3} "
            f"rate={s.rate or '-':<5} scripted={scripted:<2} faults={faults} crashes={len(res.crashes)} "
            f"-> {res.status.get('state', '?')} {res.duration:.1f}s {counts}")
    if res.error:
        return head + f"\n      !! HARNESS ERROR: {res.error}"
    if not res.violations:
        return head + "  ok"
    kinds = Counter(k for k, _ in res.violations)
    out = [head + "  VIOLATIONS " + " ".join(f"{k}x{n}" for k, n in kinds.items())]
    shown: Counter = Counter()
    for kind, detail in res.violations:
        shown[kind] += 1
        if shown[kind] <= 3:
            out.append(f"      !! {kind}: {detail}")
    return "\n".join(out)


def campaign(*, runs: int = 200, seed: int = 1, seeds: list[int] | None = None, parallel: int = 3,
             per_cluster: int = 25, config: Config = Config(), workdir: Path | None = None,
             out: Callable[[str], None] = print) -> Summary:
    """Run the campaign; returns the Summary (also printed through `out`, line by line)."""
    seed_rng = random.Random(seed)
    run_seeds = list(seeds) if seeds else [seed_rng.randrange(1, 10**7) for _ in range(runs)]
    per_cluster = max(1, min(per_cluster, 299))
    port = free_port()
    # The bench process is a producer (tasks.submit, publish_batch): it reads these on first use.
    os.environ.update({"REDIS_URL": f"redis://127.0.0.1:{port}/0", "DISPATCH_BATCH_SIZE": str(config.batch_size)})
    own_dir = workdir is None
    base = Path(tempfile.mkdtemp(prefix="chaos-")) if own_dir else Path(workdir)
    base.mkdir(parents=True, exist_ok=True)
    tag = f"{int(time.time()) % 100000:05d}"
    summary = Summary()
    stop = threading.Event()
    started = time.monotonic()
    print_lock = threading.Lock()
    out(f"chaos: {len(run_seeds)} runs, {parallel} in flight, fresh cluster per {per_cluster}; "
        f"redis port {port}; workdir {base}")
    try:
        for c, first in enumerate(range(0, len(run_seeds), per_cluster)):
            group = run_seeds[first:first + per_cluster]
            plans = [place(draw_schedule(s, config), slot, f"{tag}{c:02d}") for slot, s in enumerate(group)]
            scenario = {"latency_ms": config.latency_ms,
                        "rules": [rule for p in plans for rule in p.rules()]}
            summary.clusters += 1
            with Cluster(base / f"cluster{c:02d}", port, scenario, config, stop) as cluster:
                queue = list(enumerate(plans, first + 1))
                queue_lock = threading.Lock()
                results: list[RunResult] = []

                def work() -> None:
                    while not stop.is_set():
                        with queue_lock:
                            if not queue:
                                return
                            index, plan = queue.pop(0)
                        try:
                            res = Driver(cluster, plan).run()
                        except Stopped:
                            return
                        except Exception as exc:  # e.g. Redis unreachable when connecting
                            res = RunResult(plan, error=f"{type(exc).__name__}: {exc}")
                        with print_lock:
                            results.append(res)
                            summary.results.append(res)
                            out(run_line(index, res))

                threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, parallel))]
                for t in threads:
                    t.start()
                try:
                    while any(t.is_alive() for t in threads):
                        for t in threads:
                            t.join(0.2)
                except KeyboardInterrupt:
                    stop.set()
                    summary.interrupted = True
                    for t in threads:
                        t.join(10)
                    raise
                finally:
                    summary.exits.extend(f"cluster {c}: {line}" for line in cluster.exits)
    except KeyboardInterrupt:
        summary.interrupted = True
        out("interrupted: workers, Redis and the sandbox were stopped")
    finally:
        summary.wall = time.monotonic() - started
        if own_dir and not summary.violations and not summary.harness_errors:
            shutil.rmtree(base, ignore_errors=True)
    summary.results.sort(key=lambda r: r.plan.run_id)
    out(summary.table())
    if summary.violations or summary.harness_errors:
        out(f"logs and request logs kept under {base}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="number of runs (default 200, --quick 12)")
    parser.add_argument("--seed", type=int, default=1, help="campaign seed: draws every run's seed")
    parser.add_argument("--seeds", default="", help="comma-separated run seeds to replay instead")
    parser.add_argument("--parallel", type=int, default=3, help="runs in flight at once on one cluster")
    parser.add_argument("--per-cluster", type=int, default=25, help="runs per fresh Redis/sandbox/workers")
    parser.add_argument("--bound", type=float, default=None, help="seconds after the last fault to be done")
    parser.add_argument("--quick", action="store_true", help="a small set of small runs")
    parser.add_argument("--workdir", type=Path, default=None, help="keep clusters' logs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else Config()
    if args.bound is not None:
        config = dataclasses.replace(config, bound=args.bound)
    runs = args.runs if args.runs is not None else (12 if args.quick else 200)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] or None

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    summary = campaign(runs=runs, seed=args.seed, seeds=seeds, parallel=args.parallel,
                       per_cluster=args.per_cluster, config=config, workdir=args.workdir,
                       out=lambda line: print(line, flush=True))
    if args.json:
        args.json.write_text(json.dumps(summary.to_json(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

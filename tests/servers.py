"""Redis servers a test owns outright: killed with SIGKILL, restarted on the same port, or made replicas."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

import redis

from tests.conftest import wait_until
from worker.redis_server import redis_server_binary, server_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    """One redis-server with AOF (`appendfsync always`), on a fixed port, in its own directory."""

    def __init__(self, directory: Path, replica_of: LocalRedis | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.replica_of = replica_of
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> LocalRedis:
        extra = (f"replicaof 127.0.0.1 {self.replica_of.port}",) if self.replica_of is not None else ()
        (self.directory / "redis.conf").write_text(server_config(self.directory, self.port, daemonize=False,
                                                                 extra=extra))
        self.process = subprocess.Popen([redis_server_binary(), str(self.directory / "redis.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=20)
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the AOF holds."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

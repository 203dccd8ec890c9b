"""How a claim is made durable before the send it guards, chosen from what the Redis server offers.

A claim that Redis acknowledged can still vanish: with `appendfsync everysec` a crash loses the last
second of writes, and a failover to a replica that had not received the claim loses it too. Either way
the row reads `pending` again and would be sent twice. So, before a claimed row is sent:

    DISPATCH_MIN_REPLICAS=N>0, Redis >= 7.2   WAITAOF local N   (local: 1 unless appendfsync always)
    DISPATCH_MIN_REPLICAS=N>0, older Redis    WAIT N            (replicas received it; not fsynced)
    N=0, appendfsync always                   nothing to wait for (the embedded Redis runs this way)
    N=0, AOF on, Redis >= 7.2                 WAITAOF 1 0       (fsynced on the primary)
    N=0, otherwise                            nothing possible: a warning says what may be lost

The wait runs on the claim's own connection (one pipeline), so it covers the claim. When it is not
confirmed in time, the engine releases the rows and tries them later; nothing is sent.
"""
from __future__ import annotations

from dataclasses import dataclass

import redis.exceptions
import structlog

WAIT_TIMEOUT_MS = 1000
log = structlog.get_logger("dispatch.durability")


@dataclass(frozen=True)
class Durability:
    command: str  # "", "WAIT" or "WAITAOF"
    local: int = 0  # WAITAOF: local fsyncs wanted (0 or 1)
    replicas: int = 0
    timeout_ms: int = WAIT_TIMEOUT_MS
    warning: str = ""

    @property
    def needs_wait(self) -> bool:
        return bool(self.command)

    def queue_wait(self, pipeline) -> None:
        if self.command == "WAITAOF":
            pipeline.execute_command("WAITAOF", self.local, self.replicas, self.timeout_ms)
        else:
            pipeline.execute_command("WAIT", self.replicas, self.timeout_ms)

    def confirms(self, answer: object) -> bool:
        """Whether the wait's answer shows the claim where it had to be."""
        if self.command == "WAITAOF":
            local, replicas = (int(x) for x in answer)  # type: ignore[union-attr]
            return local >= self.local and replicas >= self.replicas
        return int(answer) >= self.replicas  # type: ignore[arg-type]

    def describe(self) -> str:
        if self.command == "WAITAOF":
            return f"WAITAOF {self.local} {self.replicas}"
        if self.command == "WAIT":
            return f"WAIT {self.replicas}"
        return "none"


def choose_durability(version: tuple[int, int], appendonly: str | None, appendfsync: str | None,
                      min_replicas: int) -> Durability:
    """The wait for a server of `version` with that AOF configuration (None: unknown, e.g. managed)."""
    has_waitaof = version >= (7, 2)
    fsync_always = appendonly == "yes" and appendfsync == "always"
    if min_replicas > 0:
        if has_waitaof:
            local = 0 if fsync_always or appendonly != "yes" else 1
            return Durability("WAITAOF", local=local, replicas=min_replicas)
        return Durability("WAIT", replicas=min_replicas)
    if fsync_always:
        return Durability("")
    if has_waitaof and appendonly == "yes":
        return Durability("WAITAOF", local=1)
    return Durability("", warning=(
        f"claims are not made durable (Redis {version[0]}.{version[1]}, appendonly {appendonly or '?'}, "
        f"appendfsync {appendfsync or '?'}): a Redis crash can lose the last second of claims and send "
        "those rows twice; use appendfsync always, Redis >= 7.2, or DISPATCH_MIN_REPLICAS"))


async def detect_durability(client, min_replicas: int) -> Durability:
    """Ask the server (INFO, CONFIG GET) and choose; logs a warning when no durability is possible."""
    info = await client.info("server")
    version = tuple(int(part) for part in str(info.get("redis_version", "0.0")).split(".")[:2])
    appendonly = appendfsync = None
    try:
        appendonly = (await client.config_get("appendonly")).get("appendonly")
        appendfsync = (await client.config_get("appendfsync")).get("appendfsync")
    except redis.exceptions.ResponseError:
        pass  # CONFIG disabled (managed Redis)
    chosen = choose_durability(version, appendonly, appendfsync, min_replicas)  # type: ignore[arg-type]
    if chosen.warning:
        log.warning("claims may be lost in a Redis crash", detail=chosen.warning)
    return chosen

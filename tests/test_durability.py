"""How claims are made durable: the choice per server (a pure table) and the embedded server's settings."""
from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from worker.durability import choose_durability, detect_durability

VERSIONS = st.tuples(st.integers(5, 8), st.integers(0, 9))
APPENDONLY = st.sampled_from(["yes", "no", None])
APPENDFSYNC = st.sampled_from(["always", "everysec", "no", None])


class TestChooseDurability:
    def test_the_documented_table(self):
        """Each deployment shape of the README gets the wait the README promises."""
        assert choose_durability((7, 0), "yes", "always", 0).command == ""
        assert choose_durability((7, 2), "yes", "everysec", 0).describe() == "WAITAOF 1 0"
        assert choose_durability((7, 2), "yes", "always", 2).describe() == "WAITAOF 0 2"
        assert choose_durability((7, 4), "yes", "everysec", 1).describe() == "WAITAOF 1 1"
        assert choose_durability((6, 2), "yes", "everysec", 1).describe() == "WAIT 1"
        assert choose_durability((6, 2), "yes", "everysec", 0).warning

    @given(VERSIONS, APPENDONLY, APPENDFSYNC, st.integers(0, 5))
    def test_every_shape_waits_or_says_why_not(self, version, appendonly, appendfsync, replicas):
        """Whatever the server, the choice either waits, needs no wait (fsync always), or warns."""
        chosen = choose_durability(version, appendonly, appendfsync, replicas)
        fsync_always = appendonly == "yes" and appendfsync == "always"
        assert chosen.needs_wait or fsync_always or chosen.warning
        assert not (chosen.needs_wait and chosen.warning)
        if replicas:
            assert chosen.replicas == replicas and chosen.needs_wait
        if chosen.command == "WAITAOF":
            assert version >= (7, 2)

    @given(VERSIONS, APPENDONLY, APPENDFSYNC, st.integers(1, 5), st.integers(0, 6))
    def test_confirms_only_enough_replicas(self, version, appendonly, appendfsync, replicas, got):
        """A wait's answer confirms the claim only when it reached as many replicas as required."""
        chosen = choose_durability(version, appendonly, appendfsync, replicas)
        answer = [chosen.local, got] if chosen.command == "WAITAOF" else got
        assert chosen.confirms(answer) == (got >= replicas)


class TestEmbeddedServer:
    def test_embedded_redis_fsyncs_every_write(self, redis_url):
        """The server the project starts itself runs `appendfsync always`, so no wait is needed."""
        assert redis.Redis.from_url(redis_url).config_get("appendfsync")["appendfsync"] == "always"

        async def detect():
            client = aioredis.Redis.from_url(redis_url, decode_responses=True)
            try:
                return await detect_durability(client, 0)
            finally:
                await client.aclose()

        chosen = asyncio.run(detect())
        assert not chosen.needs_wait and not chosen.warning

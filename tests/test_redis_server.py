"""The embedded Redis: started on first use, shared, data kept across restarts; evicting servers refused."""
from __future__ import annotations

import pytest
import redis

from worker.errors import ConfigError
from worker.redis_server import EmbeddedRedis, connect, resolve_redis_url
from worker.settings import Settings


class TestEmbeddedRedis:
    def test_shared_and_durable_across_restarts(self, tmp_path):
        """A second caller reuses the running server; after a restart the data is still there (AOF)."""
        server = EmbeddedRedis(tmp_path / "redis")
        url = server.url()
        assert EmbeddedRedis(tmp_path / "redis").url() == url
        redis.Redis.from_url(url).hset("dispatch:run:{r1}", "state", "paused")
        server.stop()
        restarted = server.url()
        try:
            assert redis.Redis.from_url(restarted).hget("dispatch:run:{r1}", "state") == b"paused"
            assert redis.Redis.from_url(restarted).config_get("appendonly")["appendonly"] == "yes"
        finally:
            server.stop()

    def test_settings_without_redis_url_use_dispatch_home(self, tmp_path):
        """With no REDIS_URL the server lives under DISPATCH_HOME/redis."""
        settings = Settings.from_env({"DISPATCH_HOME": str(tmp_path)})
        try:
            url = resolve_redis_url(settings)
            assert (tmp_path / "redis" / "redis.port").read_text() in url
        finally:
            EmbeddedRedis(tmp_path / "redis").stop()


class TestNoEviction:
    def test_evicting_server_is_refused(self, redis_url):
        """A Redis whose maxmemory-policy could evict our keys is refused with one sentence."""
        client = redis.Redis.from_url(redis_url)
        client.config_set("maxmemory-policy", "allkeys-lru")
        try:
            with pytest.raises(ConfigError, match="noeviction"):
                connect(redis_url)
        finally:
            client.config_set("maxmemory-policy", "noeviction")


def test_embedded_redis_needs_its_generated_password(tmp_path):
    """Loopback is not enough: the embedded server wants a password kept in an owner-only file."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.url()
    try:
        password_file = tmp_path / "redis" / "redis.password"
        assert password_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
        assert password_file.read_text() in url
        port = int((tmp_path / "redis" / "redis.port").read_text())
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert redis.Redis.from_url(url).ping()
    finally:
        server.stop()

"""The peer we measure against: the tutorial pattern, one Celery task per recipient, httpx sync inside."""
from __future__ import annotations

import os

import httpx
from celery import Celery

app = Celery("naive", broker=os.environ["REDIS_URL"])
app.conf.update(task_ignore_result=True, task_acks_late=True, worker_prefetch_multiplier=4,
                task_default_queue="naive", worker_hijack_root_logger=False)
_client: httpx.Client | None = None


@app.task(name="naive.send")
def send(url: str, phone: str, done_key: str) -> None:
    global _client
    if _client is None:
        _client = httpx.Client(headers={"X-Client-Id": "sandbox", "X-Client-Secret": "sandbox"}, timeout=30)
    _client.post(f"{url}/send/sms", json={"campaign": "dir_12345", "phone": phone})
    _counter().incr(done_key)  # how the benchmark sees the end (one cheap Redis call)


_redis = None


def _counter():
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _redis

"""The `dispatch` console command: worker.cli's commands, given Celery as the way to queue and consume."""
from __future__ import annotations

import sys


class CeleryBackend:
    """What the CLI needs from Celery: publish a batch, run a worker in this process."""

    def publish(self, run_id: str, rows: list[int]) -> None:
        from tasks.batches import publish_batch

        publish_batch(run_id, rows)

    def run_worker(self, argv: list[str]) -> None:
        from tasks.app import QUEUE, app

        app.worker_main(["worker", "-Q", QUEUE, "--without-gossip", "--without-mingle", *argv])


def main(argv: list[str] | None = None) -> None:
    from worker.cli import run

    sys.exit(run(argv, backend=CeleryBackend()))

"""A small seeded chaos campaign (bench/chaos.py): a handful of runs under worker, child and Redis
kills, a lost broker message, pause/resume, cancel, retry, late suppression and scripted sandbox
faults, each checked against the sandbox's request log. About a minute.

The campaign runs in its own process (`python -m bench.chaos --json …`): it is a Celery producer
bound to its own Redis (REDIS_URL is read once per process by tasks.app), which must not leak into
or out of the rest of the suite. `python -m bench.chaos --seeds S` replays a failing schedule.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.chaos import QUICK, draw_schedule
from tests.conftest import ROOT

# Chosen so that together they draw every infrastructure/operator fault kind at least once.
SEEDS = [29, 283, 592, 5, 76, 79]
BOUND = 30  # seconds after a run's last fault by which it must be done


def test_seeds_cover_every_fault_kind():
    drawn = {f.kind for seed in SEEDS for f in draw_schedule(seed, QUICK).faults}
    assert drawn >= {"worker_kill", "child_kill", "redis_kill", "lost_message", "pause", "cancel",
                     "retry", "suppress"}


@pytest.mark.timeout(240)
def test_seeded_chaos_campaign_has_no_violations(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--seeds", ",".join(map(str, SEEDS)),
         "--parallel", "3", "--bound", str(BOUND), "--workdir", str(tmp_path / "work"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert len(summary["runs"]) == len(SEEDS), proc.stdout[-3000:]
    assert not summary["harness_errors"], proc.stdout[-3000:]
    assert summary["violations"] == {}, proc.stdout[-6000:]

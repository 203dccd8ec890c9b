"""`dispatch serve` as a new user starts it: the embedded default, a generated token, a local worker."""
from __future__ import annotations

import os
import socket

from tests.conftest import ROOT, run_dispatch, wait_until
from tests.service.conftest import start_service, stop_service
from worker.redis_server import EmbeddedRedis

SAMPLES = ROOT / "samples"


def new_user_env(home) -> dict[str, str]:
    """Nothing configured: no REDIS_URL, no token, no credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUPONTOOLS_", "DISPATCH_", "REDIS_"))}
    return {**env, "DISPATCH_HOME": str(home), "PYTHONPATH": str(ROOT)}


def test_the_whole_flow_on_the_embedded_default_with_no_other_setup(tmp_path):
    """serve --sandbox with nothing configured: it prints a login URL with a generated token (kept
    owner-only), and a run uploaded over the API completes with no worker started by hand."""
    home = tmp_path / "home"
    env = {**new_user_env(home), "DISPATCH_POLICY": str(SAMPLES / "policy.toml")}  # short retry delays
    served = start_service(env, "--sandbox", "--sandbox-scenario", str(SAMPLES / "scenario.json"))
    try:
        token_file = home / "api-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert any(f"?token={token}" in line for line in served.output)
        served.token = token
        with served.client() as client, open(SAMPLES / "recipients.csv", "rb") as f:
            upload = client.post("/api/uploads", files={"file": ("recipients.csv", f, "text/csv")},
                                 data={"channel": "sms", "region": "GB"})
            assert upload.status_code == 201, upload.text
            run = client.post("/api/runs", json={"upload": upload.json()["upload"], "directory": "dir_12345",
                                                 "body": "Hi"})
            assert run.status_code == 201, run.text
            run_id = run.json()["run"]
            done = wait_until(lambda: (s := client.get(f"/api/runs/{run_id}").json())["done"] and s, timeout=120)
        assert done["state"] == "completed" and done["counts"]["sent"] >= 1
        assert done["counts"].get("blacklisted") == 1  # the scenario's number ending 605
        assert not any(token in line for line in served.output if "ready" not in line)
    finally:
        stop_service(served)
        EmbeddedRedis(home / "redis").stop()


def test_a_taken_port_is_one_sentence(tmp_path, redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**new_user_env(tmp_path / "home"), "REDIS_URL": redis_url}
        result = run_dispatch(env, "serve", "--port", str(port), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"dispatch: Cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

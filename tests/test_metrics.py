"""The metrics module and its HTTP server (real sockets on a free port)."""

from __future__ import annotations

import urllib.error
import urllib.request

from nodeagent import metrics


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serves_metrics_health_and_readiness_on_one_port():
    health = metrics.HealthState()
    server = metrics.serve(0, health, host="127.0.0.1")
    try:
        metrics.set_image_states(["present", "present", "failed"])
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert 'nodeagent_prewarm_images{state="present"} 2.0' in body
        assert 'nodeagent_prewarm_images{state="pulling"} 0.0' in body
        assert "nodeagent_build_info{" in body
        assert 'nodeagent_prewarm_pull_duration_seconds_bucket{le="3600.0"}' in body
        assert 'nodeagent_prewarm_pull_failures_total{reason="stalled"}' in body
        assert get(server.port, "/healthz") == (200, "ok\n")
        assert get(server.port, "/readyz") == (503, "starting\n")
        health.set_ready(True, "all hot images present")
        assert get(server.port, "/readyz") == (200, "all hot images present\n")
        health.set_live(False, "containerd gone")
        assert get(server.port, "/healthz") == (503, "containerd gone\n")
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.close()


def test_heartbeat_timeout_fails_liveness():
    health = metrics.HealthState(heartbeat_timeout_s=0.0)
    assert health.live()[0] is False
    health.heartbeat_timeout_s = 60
    health.beat()
    assert health.live() == (True, "ok")


def test_failure_reasons_are_bounded():
    assert metrics.failure_reason("auth") == "auth"
    assert metrics.failure_reason("something new") == "other"
    assert metrics.failure_reason(None) == "other"

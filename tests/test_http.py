"""The daemon's HTTP face over real loopback HTTP (waitress): health, readiness, Prometheus metrics,
the JSON API, the report, the bearer token, limits, graceful stop, and the heartbeat."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import requests
from fixtures_notify import make_alert
from prometheus_client.parser import text_string_to_metric_families

from mistwatch.errors import ConfigError
from mistwatch.model import Notification
from mistwatch.notify import outbox
from mistwatch.service.heartbeat import Heartbeat
from mistwatch.service.http import HttpServer, HttpSettings, http_settings

TOKEN = "tok-http-0123456789abcdef"
NOW = datetime.now(timezone.utc)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from an exposition body, parsed by prometheus_client."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def record_run(store, finished: datetime, status: str = "ok") -> None:
    run = store.start_run(finished - timedelta(seconds=5), "all")
    store.finish_run(run, finished_at=finished, status=status, api_calls=12)


def cycle_result(**overrides):
    base = dict(status="ok", stage_errors=[], duration_s=2.5, started_at=NOW - timedelta(seconds=30),
                stages={"collect": 1.5, "rules": 0.25, "notify": 0.5}, api_calls=42, collectors_failed=[],
                notify=SimpleNamespace(sent=[SimpleNamespace(notifier="mail")] * 2,
                                       failed=[SimpleNamespace(notifier="hook")], permanent_failures=[]))
    return SimpleNamespace(**{**base, **overrides})


# -- health and the token --------------------------------------------------------------------------

def test_healthz_answers_without_the_token(http_face):
    face = http_face(token=TOKEN)
    answer = face.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/readyz", "/metrics", "/api/v1/alerts", "/api/v1/status", "/"])
def test_every_other_path_needs_the_bearer_token(http_face, path):
    face = http_face(token=TOKEN)
    assert face.get(path).status_code == 401
    assert face.get(path, token="wrong-token-0123456789").status_code == 401
    assert face.get(path, token=TOKEN).status_code != 401


def test_a_refused_request_says_how_to_authenticate(http_face):
    answer = http_face(token=TOKEN).get("/metrics")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in answer.json()["error"]


def test_without_a_token_configured_everything_is_open(http_face):
    assert http_face().get("/api/v1/status").status_code == 200


# -- readiness --------------------------------------------------------------------------------------

def test_readyz_is_503_before_the_first_good_collection(http_face):
    answer = http_face().get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "not ready", "reason": "no successful collection yet"}


def test_readyz_is_200_after_a_recent_good_collection(http_face):
    face = http_face()
    record_run(face.env.store, NOW - timedelta(minutes=5))
    answer = face.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ready"


def test_readyz_is_503_when_the_last_good_collection_is_older_than_three_intervals(http_face):
    face = http_face()
    record_run(face.env.store, NOW - timedelta(minutes=50))  # interval 15m: 45m is the limit
    record_run(face.env.store, NOW - timedelta(minutes=5), status="failed")
    answer = face.get("/readyz")
    assert answer.status_code == 503
    assert "more than 3 intervals" in answer.json()["reason"]


def test_readyz_is_503_when_the_outbox_is_stuck(http_face):
    face = http_face(outbox_stuck_after=timedelta(minutes=30))
    record_run(face.env.store, NOW - timedelta(minutes=1))
    old = Notification(id="n1", notifier="console", kind="alerts", title="t", created_at=NOW - timedelta(hours=2))
    outbox.enqueue(face.env.store, [old], NOW - timedelta(hours=2))
    answer = face.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["reason"].startswith("the outbox is stuck: a notification has waited 2h")


def test_the_readiness_answer_is_one_line_of_json(http_face):
    answer = http_face().get("/readyz")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.text.count("\n") == 1 and answer.text.endswith("\n")


# -- /metrics ---------------------------------------------------------------------------------------

def test_metrics_follow_the_exposition_format_and_count_cycles_by_outcome(http_face):
    face = http_face()
    face.live.record_cycle(cycle_result(), ["mist"])
    face.live.record_cycle(cycle_result(status="failed", collectors_failed=["mist"], notify=None), ["mist"])
    answer = face.get("/metrics")
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(answer.text)
    assert got[("mistwatch_cycles_total", (("outcome", "ok"),))] == 1
    assert got[("mistwatch_cycles_total", (("outcome", "failed"),))] == 1
    assert got[("mistwatch_cycle_duration_seconds", ())] == 2.5


def test_metrics_show_each_stage_and_the_rule_evaluation_time(http_face):
    face = http_face()
    face.live.record_cycle(cycle_result(), ["mist"])
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_cycle_stage_duration_seconds", (("stage", "collect"),))] == 1.5
    assert got[("mistwatch_cycle_stages_total", (("outcome", "ok"), ("stage", "rules")))] == 1
    assert got[("mistwatch_rule_evaluation_seconds", ())] == 0.25


def test_a_stage_that_raised_is_counted_as_an_error(http_face):
    face = http_face()
    face.live.record_cycle(cycle_result(stage_errors=["notify"]), ["mist"])
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_cycle_stages_total", (("outcome", "error"), ("stage", "notify")))] == 1
    assert got[("mistwatch_cycles_total", (("outcome", "error"),))] == 1


def test_metrics_count_api_calls_and_notifications_by_notifier(http_face):
    face = http_face()
    face.live.record_cycle(cycle_result(), ["mist"])
    face.live.record_cycle(cycle_result(api_calls=8), ["mist"])
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_api_calls_total", ())] == 50
    assert got[("mistwatch_cycle_api_calls", ())] == 8
    assert got[("mistwatch_notifications_total", (("notifier", "mail"), ("outcome", "sent")))] == 4
    assert got[("mistwatch_notifications_total", (("notifier", "hook"), ("outcome", "failed")))] == 2


def test_collection_age_is_per_collector_and_a_failed_collector_keeps_aging(http_face):
    face = http_face(collectors=["mist", "lab"], now=lambda: NOW)
    face.live.record_cycle(cycle_result(started_at=NOW - timedelta(seconds=600)), ["mist", "lab"])
    face.live.record_cycle(cycle_result(started_at=NOW - timedelta(seconds=60), collectors_failed=["lab"]),
                           ["mist", "lab"])
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_collection_age_seconds", (("collector", "mist"),))] == 60
    assert got[("mistwatch_collection_age_seconds", (("collector", "lab"),))] == 600


def test_collection_age_after_a_restart_comes_from_the_last_good_run_in_the_store(http_face):
    face = http_face(now=lambda: NOW)
    record_run(face.env.store, NOW - timedelta(seconds=300))
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_collection_age_seconds", (("collector", "mist"),))] == 300


def test_metrics_show_alerts_by_state_and_severity_from_the_store(http_face):
    face = http_face()
    face.env.store.save_alerts([
        make_alert("a", device_id="d1"), make_alert("b", device_id="d2"),
        make_alert("c", device_id="d3", severity="minor", state="pending"),
    ])
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_alerts", (("severity", "critical"), ("state", "firing")))] == 2
    assert got[("mistwatch_alerts", (("severity", "minor"), ("state", "pending")))] == 1
    assert got[("mistwatch_alerts", (("severity", "major"), ("state", "firing")))] == 0


def test_metrics_show_outbox_depth_and_the_oldest_pending_age(http_face):
    face = http_face(now=lambda: NOW)
    made = NOW - timedelta(seconds=90)
    outbox.enqueue(face.env.store, [Notification(id=f"n{i}", notifier="console", kind="alerts", title="t",
                                                 created_at=made + timedelta(seconds=i)) for i in range(3)], made)
    got = samples(face.get("/metrics").text)
    assert got[("mistwatch_outbox_messages", (("status", "pending"),))] == 3
    assert got[("mistwatch_outbox_oldest_pending_age_seconds", ())] == 90


def test_metric_names_follow_prometheus_conventions(http_face):
    face = http_face()
    face.live.record_cycle(cycle_result(), ["mist"])
    for family in text_string_to_metric_families(face.get("/metrics").text):
        assert family.name.startswith("mistwatch_")
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples if not s.name.endswith("_created"))
        assert "_seconds_seconds" not in family.name and "_ms" not in family.name


# -- the JSON API and the report ------------------------------------------------------------------------

def test_the_alerts_api_filters_by_state_severity_and_site(http_face):
    face = http_face()
    face.env.store.save_alerts([
        make_alert("a", site="Dublin HQ", device_id="d1"),
        make_alert("b", site="Cork", site_id="s2", device_id="d2", severity="major"),
        make_alert("c", site="Cork", site_id="s2", device_id="d3", severity="minor", state="pending"),
        make_alert("d", site="Cork", site_id="s2", device_id="d4", state="resolved"),
    ])
    everything = face.get("/api/v1/alerts").json()
    assert [a["rule_id"] for a in everything["alerts"]] == ["a", "b", "c"]  # open ones, most severe first
    cork_firing = face.get("/api/v1/alerts?state=firing&site=cork").json()
    assert [a["rule_id"] for a in cork_firing["alerts"]] == ["b"]
    assert [a["rule_id"] for a in face.get("/api/v1/alerts?state=resolved").json()["alerts"]] == ["d"]
    assert face.get("/api/v1/alerts?severity=minor").json()["count"] == 1


@pytest.mark.parametrize("query", ["state=open", "severity=urgent", "colour=red"])
def test_a_bad_alert_filter_is_a_400_naming_it(http_face, query):
    answer = http_face().get("/api/v1/alerts?" + query)
    assert answer.status_code == 400
    assert query.split("=")[0] in answer.json()["error"] or query.split("=")[1] in answer.json()["error"]


def test_the_status_api_is_what_status_json_prints(http_face):
    face = http_face()
    record_run(face.env.store, NOW - timedelta(minutes=1))
    data = face.get("/api/v1/status").json()
    assert data["last_successful_run"]["status"] == "ok"
    assert data["outbox"] == {"sent": 0, "pending": 0, "failed": 0, "superseded": 0}


def test_the_latest_report_is_served_at_the_root_locked_down(http_face):
    face = http_face()
    reports = face.env.config.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "latest.html").write_text("<html><body>report</body></html>", encoding="utf-8")
    answer = face.get("/")
    assert answer.status_code == 200
    assert answer.text == "<html><body>report</body></html>"
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


def test_before_the_first_report_the_root_is_a_404_saying_so(http_face):
    answer = http_face().get("/")
    assert answer.status_code == 404
    assert "no report yet" in answer.json()["error"]


# -- hostile requests --------------------------------------------------------------------------------------

def test_a_wrong_method_is_405_with_the_allowed_ones(http_face):
    answer = requests.post(http_face().url + "/metrics", data=b"x", timeout=5)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, HEAD"


def test_an_unknown_path_is_404(http_face):
    assert http_face().get("/admin").status_code == 404


def test_an_oversized_body_is_refused_before_the_app_reads_it(http_face):
    seen = []
    face = http_face(max_body_bytes=2048, webhook=lambda *args: seen.append(args) or (202, {}))
    answer = face.post("/webhooks/mist", b"x" * 10_000, {"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert seen == []


def test_a_stalled_client_is_cut_off_and_others_are_served_meanwhile(http_face):
    face = http_face(request_timeout_s=1)
    with socket.create_connection(("127.0.0.1", face.server.port), timeout=10) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and never finishes the headers
        assert face.get("/healthz").status_code == 200  # not blocked by the slow one
        t0 = time.monotonic()
        slow.settimeout(10)
        assert slow.recv(1024) == b""  # closed by the server
    assert time.monotonic() - t0 < 6


def test_the_access_log_names_method_path_and_status_but_not_the_token(http_face, caplog):
    face = http_face(token=TOKEN)
    with caplog.at_level(logging.INFO, logger="mistwatch.service.http"):
        face.get("/api/v1/alerts", token=TOKEN)
        face.get("/admin", token=TOKEN)
    lines = [r.getMessage() for r in caplog.records if r.name == "mistwatch.service.http"]
    assert any("GET /api/v1/alerts 200" in line for line in lines)
    assert any("GET /admin 404" in line for line in lines)
    assert TOKEN not in caplog.text


# -- the server --------------------------------------------------------------------------------------

def test_the_listener_binds_to_loopback_unless_told_otherwise():
    assert http_settings({"listen": "9108"}).host == "127.0.0.1"
    assert http_settings({"listen": 9108}).port == 9108
    assert http_settings({}) is None  # off unless asked for
    assert http_settings({"listen": "127.0.0.1:1"}, "[::1]:9200").host == "::1"  # --listen wins


@pytest.mark.parametrize("text", ["localhost:http", "127.0.0.1:70000", "[::1", ":"])
def test_a_bad_listen_address_is_a_config_error_naming_the_key(text):
    with pytest.raises(ConfigError) as err:
        http_settings({"listen": text})
    assert "http.listen" in str(err.value)


def test_a_port_in_use_is_a_config_error(http_face):
    face = http_face()
    with pytest.raises(ConfigError) as err:
        HttpServer(lambda e, s: [], HttpSettings(port=face.server.port)).start()
    assert "cannot listen on 127.0.0.1:" in str(err.value)


def test_stopping_lets_a_request_in_flight_finish_and_refuses_new_ones(http_face):
    started = threading.Event()

    def slow_app(environ, start_response):
        started.set()
        time.sleep(1.0)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"done"]

    face = http_face(app=slow_app)
    url, port = face.url, face.server.port
    results = []
    client = threading.Thread(target=lambda: results.append(requests.get(url + "/slow", timeout=10)))
    client.start()
    assert started.wait(5)
    face.server.stop(grace=5)
    client.join(10)
    assert results and results[0].status_code == 200 and results[0].text == "done"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- the heartbeat -------------------------------------------------------------------------------------

def test_the_heartbeat_pings_after_a_good_cycle_and_appends_fail_after_a_failed_one(http_receiver):
    beat = Heartbeat(http_receiver.url("/ping/abc-123"))
    beat.ping(True)
    time.sleep(0.3)
    beat.ping(False)
    beat.close()
    assert [r.path for r in http_receiver.requests] == ["/ping/abc-123", "/ping/abc-123/fail"]


def test_a_hanging_heartbeat_service_never_holds_up_the_cycle(caplog):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ping/secret-check-uuid-0001"
        outcomes = []
        beat = Heartbeat(url, record=outcomes.append, timeout=(0.5, 0.5))
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mistwatch.service.heartbeat"):
            for _ in range(20):
                beat.ping(True)
            assert time.monotonic() - t0 < 0.1
            beat.close(timeout=5)
    assert "error" in outcomes
    assert "heartbeat ping failed" in caplog.text
    assert "secret-check-uuid-0001" not in caplog.text  # the URL is the credential


def test_readyz_json_names_the_reason_in_one_line(http_face):
    text = http_face().get("/readyz").text
    assert json.loads(text)["reason"]


# -- the real daemon -------------------------------------------------------------------------------------

@pytest.mark.skipif(__import__("sys").platform == "win32", reason="SIGTERM is POSIX")
def test_the_daemon_serves_while_it_runs_pings_the_heartbeat_and_stops_cleanly(tmp_path, simulator, http_receiver):
    from fixtures_smtp import free_port
    from test_daemon import start_daemon, stop, wait_for, write_config

    port = free_port()
    write_config(tmp_path, simulator, http={"listen": f"127.0.0.1:{port}", "token": TOKEN},
                 daemon={"heartbeat_url": http_receiver.url("/ping/check-0001")})
    proc, log = start_daemon(tmp_path, simulator, "--interval", "1h")
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def ready() -> bool:
        try:
            return requests.get(url + "/readyz", headers=auth, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(ready, timeout=60, what="/readyz to be 200")
        got = samples(requests.get(url + "/metrics", headers=auth, timeout=5).text)
        assert got[("mistwatch_cycles_total", (("outcome", "ok"),))] == 1
        assert got[("mistwatch_cycle_api_calls", ())] > 0
        assert got[("mistwatch_api_requests_total",
                    (("collector", "mist"), ("endpoint", "/api/v1/self"), ("status", "200")))] == 1
        assert requests.get(url + "/", headers=auth, timeout=5).text.startswith("<!")
        wait_for(lambda: len(http_receiver.requests) == 1, what="the heartbeat")
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert [r.path for r in http_receiver.requests] == ["/ping/check-0001"]
    text = log.read_text()
    assert f"listening on http://127.0.0.1:{port}" in text
    assert "check-0001" not in text and TOKEN not in text
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/healthz", timeout=2)

"""Mist webhooks into the daemon: signature, de-duplication, hostile bodies, and a device that goes
down by webhook alerting within seconds, over real HTTP (waitress) and a real store."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests
import yaml
from test_daemon import REPO, start_daemon, stop, wait_for

from mistwatch import WebhookRequest
from mistwatch.engine import close_app, open_app, run_cycle
from mistwatch.plugins.mist.webhook import handle, sample, sign
from mistwatch.service.webhooks import WebhookHub

SECRET = "mist-webhook-secret-0123456789"
NOW = datetime.now(timezone.utc)


def request(body: bytes, signature: str | None = "good", org_id: str = "org-1") -> WebhookRequest:
    headers = {} if signature is None else {
        "x-mist-signature-v2": sign(SECRET, body) if signature == "good" else signature}
    return WebhookRequest(headers=headers, body=body, settings={"org_id": org_id, "webhook_secret": SECRET},
                          received_at=NOW)


# -- the Mist plugin's reading of webhooks ---------------------------------------------------------

def test_a_device_disconnect_becomes_a_partial_device_state_at_the_event_time():
    body = sample("org-1", "site-1", "5c5b35000001", at=NOW.timestamp() - 60, site_name="Dublin",
                  device_name="AP-01")
    [item] = handle(request(body))
    [entity] = item.entities
    assert entity.key == "device:00000000-0000-0000-1000-5c5b35000001"
    assert entity.metrics == {"device.connected": 0.0}
    assert entity.labels["site_id"] == "site-1" and entity.labels["device_type"] == "ap"
    assert abs((NOW - item.at).total_seconds() - 60) < 1


def test_a_missing_or_wrong_signature_is_refused():
    body = sample("org-1", "site-1", "5c5b35000001")
    with pytest.raises(PermissionError, match="no x-mist-signature-v2"):
        handle(request(body, signature=None))
    with pytest.raises(PermissionError, match="does not match"):
        handle(request(body, signature=sign("another-secret-0123456789", body)))
    with pytest.raises(PermissionError, match="does not match"):
        handle(request(body + b" ", signature=sign(SECRET, body)))  # body changed after signing


def test_without_a_configured_secret_every_webhook_is_refused():
    body = sample("org-1", "site-1", "5c5b35000001")
    unsigned = WebhookRequest(headers={"x-mist-signature-v2": sign("", body)}, body=body,
                              settings={"org_id": "org-1"}, received_at=NOW)
    with pytest.raises(PermissionError, match=r"mist\.webhook_secret"):
        handle(unsigned)


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"topic": "alarms"}', b'{"topic": 1, "events": []}',
                                  b"\xff\xfe"])
def test_a_body_that_is_not_a_mist_webhook_is_a_value_error(body):
    with pytest.raises(ValueError):
        handle(request(body))


def test_hostile_event_fields_are_capped_flattened_and_future_times_clamped():
    event = {"type": "AP_DISCONNECTED", "mac": "5c5b35000001", "org_id": "org-1", "site_id": "s1",
             "device_name": "<b>AP</b>\r\nX-Injected: 1" + "A" * 100_000, "timestamp": 4_102_444_800}
    body = json.dumps({"topic": "device-updowns", "events": [event, "junk", {"type": None}]}).encode()
    [item] = handle(request(body))
    name = item.entities[0].labels["device_name"]
    assert "\n" not in name and "\r" not in name and len(name) <= 256
    assert item.at == NOW  # a timestamp in the future counts as now


def test_another_orgs_events_are_ignored():
    body = sample("org-2", "site-1", "5c5b35000001")
    assert handle(request(body)) == []


def test_the_same_event_through_an_org_and_a_site_webhook_has_one_id():
    body = sample("org-1", "site-1", "5c5b35000001", at=1_700_000_000)
    assert handle(request(body))[0].id == handle(request(body))[0].id


# -- the intake over HTTP -----------------------------------------------------------------------------

@pytest.fixture
def mist_app(tmp_path, simulator, http_receiver, monkeypatch):
    """A real App on the simulator, rules of the shipped pack, a webhook notifier to http_receiver,
    after one poll cycle."""
    monkeypatch.setenv("MIST_API_TOKEN", simulator.token)
    config = {
        "mist": {"base_url": simulator.url, "org_id": simulator.org.org_id, "webhook_secret": SECRET},
        "state_dir": "var", "reports": {"dir": "reports"}, "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "hook", "type": "webhook", "url": http_receiver.url("/alerts")}],
        "group_wait": "0s",  # send at once: these tests are about evaluation, not batching
    }
    folder = tmp_path / "mist"  # tmp_path itself holds http_face's own config
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    app = open_app(folder / "config.yaml")
    run_cycle(app, mode="all", now=NOW - timedelta(minutes=30))
    yield app
    close_app(app)


def test_a_signed_disconnect_is_accepted_at_once_and_alerts_when_evaluated(mist_app, simulator, http_face,
                                                                           http_receiver):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    body = simulator.updown_webhook(0, at=(NOW - timedelta(minutes=11)).timestamp())  # ap-offline: for 10m
    answer = simulator.send_webhook(face.url + "/webhooks/mist", SECRET, body)
    assert answer.status_code == 202 and answer.json() == {"accepted": 1, "duplicates": 0}
    assert http_receiver.requests == []  # nothing evaluated on the HTTP thread
    hub.run(NOW)
    [sent] = http_receiver.requests
    alert = sent.json()["alerts"][0]
    assert alert["rule_id"] == "ap-offline" and alert["state"] == "firing"
    assert alert["firing_since"] is not None


def test_a_recent_disconnect_is_pending_and_fires_when_its_for_elapses(mist_app, simulator, http_face,
                                                                       http_receiver):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    event_at = NOW - timedelta(minutes=2)
    simulator.send_webhook(face.url + "/webhooks/mist", SECRET, simulator.updown_webhook(0, at=event_at.timestamp()))
    hub.run(NOW)
    [pending] = [a for a in mist_app.store.load_alerts().values() if a.rule_id == "ap-offline"]
    assert pending.state == "pending"
    assert abs((pending.pending_since - event_at).total_seconds()) < 1  # `for:` counts from the event
    due = hub.next_due(NOW)
    assert abs((due - (event_at + timedelta(minutes=10))).total_seconds()) < 1
    hub.run(due)
    assert [r.json()["alerts"][0]["state"] for r in http_receiver.requests] == ["firing"]


def test_a_replayed_webhook_is_acknowledged_but_not_processed_twice(mist_app, simulator, http_face):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    body = simulator.updown_webhook(0)
    simulator.send_webhook(face.url + "/webhooks/mist", SECRET, body)
    again = simulator.send_webhook(face.url + "/webhooks/mist", SECRET, body)
    assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicates": 1}
    assert len(hub._queue) == 1


@pytest.mark.parametrize("signature", [None, "0" * 64, "not-hex"])
def test_a_bad_signature_is_401_and_changes_nothing(mist_app, simulator, http_face, signature):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    body = simulator.updown_webhook(0)
    headers = {"Content-Type": "application/json"}
    if signature:
        headers["X-Mist-Signature-v2"] = signature
    answer = face.post("/webhooks/mist", body, headers)
    assert answer.status_code == 401
    assert hub.next_due(NOW) is None
    # and the real event afterwards is not taken for a duplicate
    assert simulator.send_webhook(face.url + "/webhooks/mist", SECRET, body).json()["accepted"] == 1


def test_malformed_json_with_a_valid_signature_is_400(mist_app, http_face):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    body = b'{"topic": "device-updowns", "events": [}'
    answer = face.post("/webhooks/mist", body, {"X-Mist-Signature-v2": sign(SECRET, body)})
    assert answer.status_code == 400
    assert "not JSON" in answer.json()["error"]


def test_an_unknown_source_and_a_get_are_refused(mist_app, http_face):
    face = http_face(webhook=WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW).receive)
    assert face.post("/webhooks/meraki", b"{}").status_code == 404
    answer = requests.get(face.url + "/webhooks/mist", timeout=5)
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"


def test_a_poll_after_the_webhook_is_the_truth(mist_app, simulator, http_face):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    simulator.send_webhook(face.url + "/webhooks/mist", SECRET,
                           simulator.updown_webhook(0, at=(NOW - timedelta(minutes=2)).timestamp()))
    hub.run(NOW)
    assert hub.next_due(NOW) is not None  # waiting to fire
    later = NOW + timedelta(minutes=1)
    run_cycle(mist_app, mode="all", now=later)  # the API says the AP is connected
    hub.polled(later)
    assert hub.next_due(later) is None
    assert [a for a in mist_app.store.load_alerts().values() if a.rule_id == "ap-offline"] == []


# -- the real daemon ---------------------------------------------------------------------------------------

@pytest.mark.skipif(__import__("sys").platform == "win32", reason="SIGTERM is POSIX")
def test_a_device_down_by_webhook_is_notified_within_seconds_by_the_running_daemon(tmp_path, simulator,
                                                                                   http_receiver):
    from fixtures_smtp import free_port

    port = free_port()
    config = {
        "mist": {"base_url": simulator.url, "token": "${MIST_API_TOKEN}", "org_id": simulator.org.org_id,
                 "webhook_secret": SECRET},
        "state_dir": "var", "reports": {"dir": "reports"}, "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "hook", "type": "webhook", "url": http_receiver.url("/alerts")}],
        "group_wait": "0s",  # the first message of a new group leaves at once
        "http": {"listen": f"127.0.0.1:{port}"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    proc, log = start_daemon(tmp_path, simulator, "--interval", "1h")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(ready, timeout=60, what="the first cycle")
        body = simulator.updown_webhook(1, at=time.time() - 11 * 60)
        t0 = time.monotonic()
        answer = simulator.send_webhook(url + "/webhooks/mist", SECRET, body)
        assert answer.status_code == 202
        wait_for(lambda: http_receiver.requests, timeout=10, what="the notification")
        elapsed = time.monotonic() - t0
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert elapsed < 5
    assert http_receiver.requests[0].json()["alerts"][0]["rule_id"] == "ap-offline"
    assert SECRET not in log.read_text()


# -- mistwatch webhooks test ---------------------------------------------------------------------------

def test_webhooks_test_sends_a_signed_sample_that_the_listener_accepts(mist_app, http_face, capsys):
    from mistwatch.cli import main

    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    main(["webhooks", "test", "--config", str(mist_app.config.path), "--url", face.url + "/webhooks/mist"])
    assert "accepted the signed sample (HTTP 202)" in capsys.readouterr().out
    assert hub.next_due(NOW) is None  # a test event changes no alert


def test_webhooks_test_fails_when_the_daemon_refuses_the_signature(mist_app, http_face, tmp_path, capsys):
    from mistwatch.cli import main

    other = tmp_path / "other.yaml"
    data = yaml.safe_load(mist_app.config.path.read_text(encoding="utf-8"))
    data["mist"]["webhook_secret"] = "a-different-secret-0123456789"
    other.write_text(yaml.safe_dump(data), encoding="utf-8")
    face = http_face(webhook=WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW).receive)
    with pytest.raises(SystemExit) as exit_:
        main(["webhooks", "test", "--config", str(other), "--url", face.url + "/webhooks/mist"])
    assert exit_.value.code == 1
    assert "HTTP 401" in capsys.readouterr().err


# -- hostile requests: a clear 4xx, nothing kept, the listener unharmed --------------------------------------

def raw_request(port: int, data: bytes, timeout: float = 5) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:  # the status line and headers are all we look at
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ConnectionResetError):  # the server may answer, then reset
                break
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize("raw, status", [
    (b"POST /webhooks/mist HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}", b"413"),
    (b"POST /webhooks/mist HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"400"),
    (b"POST /webhooks/mist HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", b"400"),
    (b"GET /api/v1/alerts?state=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    (b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
    (b"DELETE /api/v1/alerts HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
])
def test_a_hostile_request_gets_a_clear_4xx_and_changes_nothing(mist_app, http_face, raw, status):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    alerts_before = mist_app.store.load_alerts()
    answer = raw_request(face.server.port, raw)
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == status, answer[:200]
    assert hub.next_due(NOW) is None and not hub._queue
    assert mist_app.store.load_alerts() == alerts_before
    assert face.get("/healthz").status_code == 200  # unharmed


def test_a_chunked_body_is_limited_like_any_other(mist_app, http_face):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive, max_body_bytes=4096)

    def chunks():
        for _ in range(100):
            yield b"x" * 1000

    answer = requests.post(face.url + "/webhooks/mist", data=chunks(), timeout=10)
    assert answer.status_code == 413
    assert not hub._queue


def test_many_bad_signatures_in_a_row_leave_the_real_one_working(mist_app, simulator, http_face):
    hub = WebhookHub(lambda: mist_app, wake=lambda: None, now=lambda: NOW)
    face = http_face(webhook=hub.receive)
    body = simulator.updown_webhook(0)
    with requests.Session() as session:
        codes = {session.post(face.url + "/webhooks/mist", data=body, timeout=5,
                              headers={"X-Mist-Signature-v2": f"{i:064x}"}).status_code for i in range(200)}
    assert codes == {401}
    assert simulator.send_webhook(face.url + "/webhooks/mist", SECRET, body).status_code == 202

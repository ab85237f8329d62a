"""Slack, Teams and webhook notifiers against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
from fixtures_notify import T0, make_alert, resolved


def test_webhook_body_follows_the_documented_version_1_schema(notify_env, http_receiver):
    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url("/in")}])
    alert = make_alert(value=0.0, threshold=1.0)
    notify_env.notify([alert], T0)
    notify_env.notify([resolved(alert, T0 + timedelta(minutes=45), value=1.0)], T0 + timedelta(hours=1))
    first, second = (r.json() for r in http_receiver.requests)
    assert http_receiver.requests[0].path == "/in"
    assert http_receiver.requests[0].headers["Content-Type"].startswith("application/json")
    assert (first["schema"], first["version"], first["kind"], first["status"]) == (
        "mistwatch.notification", 1, "alerts", "firing")
    assert first["title"] == "[mistwatch] CRITICAL: 1 firing at Dublin HQ"
    assert first["counts"] == {"firing": 1, "resolved": 0}
    assert first["group"] == {"site_id": "site-1"}
    (a,) = first["alerts"]
    assert {k: a[k] for k in ("key", "rule_id", "state", "severity", "value", "threshold", "firing_since")} == {
        "key": alert.key, "rule_id": "ap_offline", "state": "firing", "severity": "critical", "value": 0.0,
        "threshold": 1.0, "firing_since": "2026-11-23T09:00:00Z"}
    assert a["labels"]["site_name"] == "Dublin HQ"
    assert second["status"] == "resolved" and second["thread_id"] == first["id"]
    assert second["alerts"][0]["duration_seconds"] == 45 * 60
    assert second["alerts"][0]["value"] == 1.0


def test_webhook_status_of_the_daily_digest_is_digest_not_resolved(notify_env, http_receiver):
    from mistwatch.model import Notification
    from mistwatch.notify import outbox

    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    digest = Notification(id="digest0001", notifier="hook", kind="digest", title="[mistwatch] Daily digest: Org",
                          created_at=T0, text="Org health 91", html="<p>Org health 91</p>",
                          data={"headline": "Daily digest: Org", "group_key": "digest:2026-11-23"})
    outbox.enqueue(notify_env.store, [digest], T0)
    notify_env.send_outbox(T0)
    body = http_receiver.requests[0].json()
    assert (body["kind"], body["status"], body["counts"]) == ("digest", "digest", {"firing": 0, "resolved": 0})


def test_webhook_hmac_signature_is_verifiable(notify_env, http_receiver):
    secret = "hook-signing-secret-42"
    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url(), "secret": secret}])
    notify_env.notify([make_alert()], T0)
    (request,) = http_receiver.requests
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Mistwatch-Signature"] == expected
    assert secret.encode() not in request.body


def test_webhook_without_secret_sends_no_signature(notify_env, http_receiver):
    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    notify_env.notify([make_alert()], T0)
    assert "X-Mistwatch-Signature" not in http_receiver.requests[0].headers


def test_slack_gets_a_block_kit_message(notify_env, http_receiver):
    notify_env.configure([{"name": "chat", "type": "slack", "webhook_url": http_receiver.url("/services/T0/B0/x")}])
    notify_env.notify([make_alert(site="R&D <lab>")], T0)
    body = http_receiver.requests[0].json()
    assert body["text"] == "[mistwatch] CRITICAL: 1 firing at R&amp;D &lt;lab&gt;"  # the preview is mrkdwn too
    header, section, context = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                                 "text": "[mistwatch] CRITICAL: 1 firing at R&D <lab>"}}
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "*CRITICAL* AP-01 is offline" in section["text"]["text"]
    assert "R&amp;D &lt;lab&gt;" in section["text"]["text"]  # mrkdwn control characters escaped
    assert context["type"] == "context"


def test_teams_gets_an_adaptive_card_in_a_message(notify_env, http_receiver):
    http_receiver.respond(202)  # Workflows webhooks answer 202 Accepted
    notify_env.configure([{"name": "teams", "type": "teams", "webhook_url": http_receiver.url("/workflows/x")}])
    result = notify_env.notify([make_alert(severity="major")], T0)
    assert len(result.sent) == 1
    body = http_receiver.requests[0].json()
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    title, container = card["body"]
    assert title["text"] == "[mistwatch] MAJOR: 1 firing at Dublin HQ"
    assert container["type"] == "Container" and container["style"] == "attention"
    facts = {f["title"]: f["value"] for f in container["items"][1]["facts"]}
    assert facts["Site"] == "Dublin HQ" and facts["Device"] == "AP-01 (ap)"


def test_slack_and_teams_follow_ups_mark_the_alerts_they_add_as_new(notify_env, http_receiver):
    notify_env.configure([{"name": "slack", "type": "slack", "webhook_url": http_receiver.url("/slack")},
                          {"name": "teams", "type": "teams", "webhook_url": http_receiver.url("/teams")}])
    a = make_alert()
    b = make_alert("switch_port_errors", device="SW-1", device_id="dev-2", severity="major", summary="SW-1 errors")
    notify_env.notify([a], T0)
    notify_env.notify([a, b], T0 + timedelta(minutes=15))
    slack = [r.body.decode() for r in http_receiver.requests if r.path == "/slack"]
    teams = [r.body.decode() for r in http_receiver.requests if r.path == "/teams"]
    assert "(new)" not in slack[0] and "(new)" not in teams[0]
    assert "*MAJOR* (new) SW-1 errors" in slack[1] and "MAJOR (new): SW-1 errors" in teams[1]
    assert slack[1].count("(new)") == 1 and teams[1].count("(new)") == 1


def test_a_teams_card_with_many_long_alerts_stays_under_the_28_kb_teams_accepts(notify_env, http_receiver):
    notify_env.configure([{"name": "teams", "type": "teams", "webhook_url": http_receiver.url("/teams")}])
    advice = "Check the AP's switch port (PoE budget, link, VLAN) and its uplink to the cloud. " * 4
    alerts = [make_alert(device=f"AP-{i:02d}", device_id=f"dev-{i}", recommendation=advice) for i in range(40)]
    notify_env.notify(alerts, T0)
    (request,) = http_receiver.requests
    assert len(request.body) < 28 * 1024
    body = request.json()["attachments"][0]["content"]["body"]
    shown = sum(1 for item in body if item["type"] == "Container")
    assert 5 < shown < 40
    assert body[-1]["text"] == f"... and {40 - shown} more"


def test_429_with_retry_after_is_waited_out_and_retried(notify_env, http_receiver):
    http_receiver.respond(429, headers={"Retry-After": "1"})
    notify_env.configure([{"name": "chat", "type": "slack", "webhook_url": http_receiver.url()}])
    result = notify_env.notify([make_alert()], T0)
    assert len(result.sent) == 1
    first, second = http_receiver.requests
    assert second.at - first.at >= 0.95


def test_a_retry_after_beyond_the_bound_is_left_to_the_outbox(notify_env, http_receiver):
    http_receiver.respond(429, headers={"Retry-After": "600"})
    notify_env.configure([{"name": "chat", "type": "slack", "webhook_url": http_receiver.url(),
                           "max_retry_after": 5}])
    result = notify_env.notify([make_alert()], T0)
    (failed,) = result.failed
    assert "HTTP 429" in failed.last_error
    assert failed.next_attempt_at == T0 + timedelta(seconds=600)
    assert len(http_receiver.requests) == 1
    assert notify_env.send_outbox(T0 + timedelta(seconds=599)).sent == []
    assert len(notify_env.send_outbox(T0 + timedelta(seconds=600)).sent) == 1


def test_a_4xx_answer_is_a_permanent_failure_and_the_url_stays_secret(notify_env, http_receiver):
    http_receiver.respond(404, body="no_service")
    url = http_receiver.url("/services/T0/B0/secret-key-in-the-path")
    notify_env.configure([{"name": "chat", "type": "slack", "webhook_url": url}])
    result = notify_env.notify([make_alert()], T0)
    (failure,) = result.permanent_failures
    assert "HTTP 404" in failure.last_error and "no_service" in failure.last_error
    assert "secret-key-in-the-path" not in failure.last_error


def test_a_5xx_answer_is_retried(notify_env, http_receiver):
    http_receiver.respond(500)
    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    result = notify_env.notify([make_alert()], T0)
    assert len(result.failed) == 1 and not result.permanent_failures
    assert len(notify_env.send_outbox(T0 + timedelta(minutes=1)).sent) == 1


def test_an_unreachable_endpoint_times_out_as_a_temporary_failure(notify_env):
    import socket

    with socket.socket() as listener:  # accepts connections but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        notify_env.configure([{"name": "hook", "type": "webhook", "url": url, "timeout": 0.3}])
        result = notify_env.notify([make_alert()], T0)
    (failed,) = result.failed
    assert "no answer within 0.3s" in failed.last_error


def test_docs_webhook_md_documents_exactly_the_fields_sent(notify_env, http_receiver):
    import json
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "webhook.md").read_text(encoding="utf-8")
    example = json.loads(re.search(r"```json\n(.*?)```", doc, re.DOTALL).group(1))
    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    notify_env.notify([make_alert()], T0)
    sent = http_receiver.requests[0].json()
    assert set(sent) == set(example)
    assert set(sent["alerts"][0]) == set(example["alerts"][0])


def test_after_a_temporary_failure_the_rest_of_the_batch_waits_for_the_next_cycle(notify_env, http_receiver):
    http_receiver.respond(503)
    notify_env.configure([{"name": "hook", "type": "webhook", "url": http_receiver.url()}])
    alerts = [make_alert(site=f"Site {i}", site_id=f"site-{i}", device_id=f"d{i}") for i in range(3)]
    result = notify_env.notify(alerts, T0)
    assert len(http_receiver.requests) == 1  # one refused POST, not three
    assert len(result.failed) == 3
    assert sum(item.last_error.startswith("not tried:") for item in result.failed) == 2
    assert len(notify_env.send_outbox(T0 + timedelta(minutes=1)).sent) == 3


def test_readme_notifier_examples_are_yaml_a_user_can_paste():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Notifications", 1)[1].split("\n## ", 1)[0]
    # inline notifier entries (`{name: ..., type: ...}`, possibly wrapped over two lines) and yaml blocks
    inline = [m.replace("\n", " ") for m in re.findall(r"`(\{name:.*?\})`", section, re.DOTALL)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert len(inline) == 3 and blocks
    for text in inline:
        entry = yaml.safe_load(text)
        assert isinstance(entry, dict) and entry["type"] in ("slack", "teams", "webhook"), text
    for block in blocks:
        assert isinstance(yaml.safe_load(block), dict)


@pytest.fixture
def dripping_server():
    """An HTTP server that answers 200 at once, then drips its 20-byte body a byte every 0.2 s (4 s)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
                for _ in range(20):
                    if stop.wait(0.2):
                        return
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        break

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    stop.set()
    listener.close()


def test_a_server_dripping_its_answer_fails_at_the_total_deadline_not_as_a_success(notify_env, dripping_server):
    import time

    notify_env.configure([{"name": "hook", "type": "webhook", "url": dripping_server, "timeout": 0.5}])
    started = time.monotonic()
    result = notify_env.notify([make_alert()], T0)
    took = time.monotonic() - started
    (failed,) = result.failed
    assert "no answer within 0.5s" in failed.last_error
    assert took < 3.0  # the drip lasts 4 s; a per-read timeout would have waited it out


def test_a_tls_failure_says_which_certificate_check_failed(notify_env):
    import http.server
    import ssl
    import threading

    import trustme

    ca = trustme.CA()  # a CA nobody trusts
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/hook"
        notify_env.configure([{"name": "hook", "type": "webhook", "url": url, "timeout": 5}])
        (failed,) = notify_env.notify([make_alert()], T0).failed
    finally:
        server.shutdown()
        server.server_close()
    assert "TLS certificate check failed: unable to get local issuer certificate" in failed.last_error

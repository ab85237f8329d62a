"""The Mist API client against the simulator over loopback (and a tiny server where it cannot help)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from mistwatch.errors import ConfigError
from mistwatch.plugins.mist.client import (
    CLOUDS,
    MistAPIError,
    MistAuthError,
    MistClient,
    MistForbiddenError,
    MistNotFoundError,
    MistRateLimitError,
    MistRetryError,
    parse_retry_after,
    resolve_base_url,
)

TOKEN = "sim-token-3f9a7c1e5b"


class Sleeps(list):
    """An injected sleep that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def caplog_debug(caplog):
    """caplog at DEBUG that also sees mistwatch.plugins.mist.client when the CLI's log setup stopped propagation."""
    logger = logging.getLogger("mistwatch.plugins.mist.client")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="mistwatch.plugins.mist.client")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def sim(make_simulator):
    return make_simulator(sites=12, devices_per_site=6, token=TOKEN)


def client_for(server, sleeps: Sleeps, token: str | None = TOKEN, **kw) -> MistClient:
    kw.setdefault("timeout", (2, 5))
    return MistClient(server.url, token, sleep=sleeps, **kw)


def org_path(server, tail: str) -> str:
    return f"/api/v1/orgs/{server.org.org_id}/{tail}"


# ------------------------------------------------------------------------------------------ clouds

def test_all_twelve_regional_clouds_resolve_to_their_api_hosts():
    expected = {
        "global01": "https://api.mist.com", "global02": "https://api.gc1.mist.com",
        "global03": "https://api.ac2.mist.com", "global04": "https://api.gc2.mist.com",
        "global05": "https://api.gc4.mist.com", "emea01": "https://api.eu.mist.com",
        "emea02": "https://api.gc3.mist.com", "emea03": "https://api.ac6.mist.com",
        "emea04": "https://api.gc6.mist.com", "apac01": "https://api.ac5.mist.com",
        "apac02": "https://api.gc5.mist.com", "apac03": "https://api.gc7.mist.com",
    }
    for name, url in expected.items():
        assert CLOUDS[name] == url
        assert resolve_base_url(name, None) == url
    assert len(set(CLOUDS.values())) == 12


def test_cloud_aliases_match_the_host_labels():
    assert CLOUDS["us"] == CLOUDS["global01"]
    assert CLOUDS["eu"] == CLOUDS["emea01"]
    for alias in ("gc1", "ac2", "gc2", "gc4", "gc3", "ac6", "gc6", "ac5", "gc5", "gc7"):
        assert CLOUDS[alias] == f"https://api.{alias}.mist.com"
    assert resolve_base_url("EU", None) == "https://api.eu.mist.com"


def test_base_url_wins_over_cloud_and_loses_a_pasted_api_prefix():
    assert resolve_base_url("eu", "https://mist.example.net/api/v1/") == "https://mist.example.net"


def test_unknown_cloud_or_no_cloud_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="unknown Mist cloud 'mars01'") as err:
        resolve_base_url("mars01", None)
    assert err.value.key == "mist.cloud"
    with pytest.raises(ConfigError, match="set either cloud"):
        resolve_base_url(None, None)
    with pytest.raises(ConfigError, match="http"):
        resolve_base_url(None, "api.eu.mist.com")


# -------------------------------------------------------------------------------------- pagination

def test_list_endpoint_pages_follow_x_page_headers(make_simulator, sleeps):
    server = make_simulator(sites=500, devices_per_site=5, token=TOKEN)  # 2,500 devices
    client = client_for(server, sleeps)
    devices = client.get_pages(org_path(server, "stats/devices"), {"type": "all"})
    assert len(devices) == 2500
    assert len({d["id"] for d in devices}) == 2500
    assert client.calls == 3
    assert server.calls_by_path[org_path(server, "stats/devices")] == 3
    assert sorted(q["page"] for _m, _p, q in server.requests) == ["1", "2", "3"]  # 2 and 3 travel together


def test_iter_pages_reports_progress_per_page(make_simulator, sleeps):
    server = make_simulator(sites=500, devices_per_site=5, token=TOKEN)
    client = client_for(server, sleeps)
    progress = [(done, total) for _items, done, total in
                client.iter_pages(org_path(server, "stats/devices"), {"type": "all"})]
    assert progress == [(1000, 2500), (2000, 2500), (2500, 2500)]


def test_a_later_page_that_fails_is_an_error_not_a_short_list(make_simulator, sleeps):
    server = make_simulator(sites=500, devices_per_site=5, token=TOKEN)
    client = client_for(server, sleeps, max_retries=2, prefetch=0)  # nothing asked ahead of the fault
    pages = client.iter_pages(org_path(server, "stats/devices"), {"type": "all"})
    first, _, _ = next(pages)
    assert len(first) == 1000
    server.inject("*/stats/devices", "500", count=100)
    with pytest.raises(MistRetryError, match="gave up after 3 attempts"):
        next(pages)


def test_pages_fetched_ahead_arrive_in_order_and_count_as_calls(make_simulator, sleeps):
    server = make_simulator(sites=500, devices_per_site=5, token=TOKEN)
    path, params = org_path(server, "stats/devices"), {"type": "all"}
    in_order = [d["id"] for d in client_for(server, sleeps, prefetch=0).get_pages(path, params)]
    ahead = client_for(server, sleeps, prefetch=2)
    assert [d["id"] for d in ahead.get_pages(path, params)] == in_order
    assert ahead.calls == 3


class _PageTwoFails(http.server.BaseHTTPRequestHandler):
    """Pages of 2 items, 6 in all; page 2 always answers 500 (the simulator faults by path, not page)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        page = int(parse_qs(urlsplit(self.path).query)["page"][0])
        status, body = (500, b"{}") if page == 2 else (200, json.dumps([{"n": page}] * 2).encode())
        self.send_response(status)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("X-Page-Limit", "2"), ("X-Page-Page", str(page)), ("X-Page-Total", "6")):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_failing_page_fetched_ahead_fails_the_listing_after_the_pages_before_it(sleeps):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageTwoFails)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = MistClient(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, sleep=sleeps,
                            max_retries=1, prefetch=2)
        pages = client.iter_pages("/api/v1/orgs/x/sites", {"limit": 2})
        assert next(pages)[0] == [{"n": 1}, {"n": 1}]
        with pytest.raises(MistRetryError, match="gave up after 2 attempts: HTTP 500"):
            next(pages)
    finally:
        server.shutdown()
        server.server_close()


class _PageTwoMalformed(http.server.BaseHTTPRequestHandler):
    """Pages of 2 items, 6 in all; page 2 answers 200 with a broken body the first ``broken`` times."""

    protocol_version = "HTTP/1.1"
    broken = 1
    served: list[int] = []

    def do_GET(self):
        page = int(parse_qs(urlsplit(self.path).query)["page"][0])
        type(self).served.append(page)
        body = json.dumps([{"n": page}] * 2).encode()
        if page == 2 and type(self).served.count(2) <= type(self).broken:
            body = b'[{"n": 2}, {"n"'
        self.send_response(200)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("X-Page-Limit", "2"), ("X-Page-Page", str(page)), ("X-Page-Total", "6")):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("broken", "outcome"), [(1, "retried"), (5, "gives up")])
def test_a_malformed_page_fetched_ahead_is_retried_like_any_other(sleeps, broken, outcome):
    handler = type("Handler", (_PageTwoMalformed,), {"broken": broken, "served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = MistClient(f"http://127.0.0.1:{server.server_address[1]}", TOKEN, sleep=sleeps,
                            max_retries=2, prefetch=2)
        pages = client.iter_pages("/api/v1/orgs/x/sites", {"limit": 2})
        if outcome == "retried":
            assert [row["n"] for items, _, _ in pages for row in items] == [1, 1, 2, 2, 3, 3]
            assert client.calls == 4 and len(sleeps) == 1
        else:
            assert next(pages)[0] == [{"n": 1}, {"n": 1}]
            with pytest.raises(MistRetryError, match="gave up after 3 attempts: malformed JSON in a 200"):
                next(pages)
            assert handler.served.count(2) == 3 and len(sleeps) == 2
    finally:
        server.shutdown()
        server.server_close()


def test_search_follows_the_next_link_until_it_is_absent(sim, sleeps):
    client = client_for(sim, sleeps)
    path = org_path(sim, "devices/events/search")
    params = {"device_type": "all", "duration": "7d"}
    everything = client.search(path, {**params, "limit": 1000})
    assert len(everything) > 6
    client.reset_calls()
    paged = client.search(path, {**params, "limit": 5})
    assert client.calls == -(-len(everything) // 5)
    assert [json.dumps(e, sort_keys=True) for e in paged] == [json.dumps(e, sort_keys=True) for e in everything]


# ---------------------------------------------------------------------------------------- retries

def test_429_with_retry_after_sleeps_exactly_that_long_then_succeeds(sim, sleeps):
    client = client_for(sim, sleeps)
    sim.inject("*/stats/sites", "429", count=1, retry_after=7)
    sites = client.get_pages(org_path(sim, "stats/sites"))
    assert len(sites) == 12
    assert sleeps == [7]
    assert client.calls == 2


def test_429_with_retry_after_beyond_the_cap_gives_up_at_once(sim, sleeps):
    client = client_for(sim, sleeps, max_retry_after=300)
    sim.inject("*/stats/sites", "429", count=1, retry_after=3600)
    with pytest.raises(MistRateLimitError, match=r"wait 3600s.*max_retry_after.*hourly API budget"):
        client.get_pages(org_path(sim, "stats/sites"))
    assert sleeps == []
    assert client.calls == 1


def test_429_without_retry_after_is_not_retried_because_the_hourly_budget_is_spent(sim, sleeps):
    client = client_for(sim, sleeps, max_retries=6)
    sim.inject("*/stats/sites", "429", count=1)
    with pytest.raises(MistRateLimitError, match=r"429 Too Many Requests without Retry-After.*hourly API") as err:
        client.get(org_path(sim, "stats/sites"))
    assert err.value.retry_after is None
    assert client.calls == 1 and sleeps == []


def test_429_with_short_retry_after_that_never_clears_gives_up_after_the_retries(sim, sleeps):
    client = client_for(sim, sleeps, max_retries=3)
    sim.inject("*/stats/sites", "429", count=100, retry_after=2)
    with pytest.raises(MistRateLimitError, match=r"gave up after 4 attempts.*429.*hourly API budget") as err:
        client.get(org_path(sim, "stats/sites"))
    assert sleeps == [2, 2, 2]
    assert err.value.retry_after is not None


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_5xx_is_retried_then_succeeds(sim, sleeps, kind):
    client = client_for(sim, sleeps)
    sim.inject("*/stats/sites", kind, count=2)
    assert len(client.get_pages(org_path(sim, "stats/sites"))) == 12
    assert client.calls == 3
    assert len(sleeps) == 2


def test_5xx_forever_gives_up_after_max_retries_with_the_last_error(sim, sleeps):
    client = client_for(sim, sleeps, max_retries=4)
    sim.inject("*/stats/sites", "503", count=100)
    with pytest.raises(MistRetryError) as err:
        client.get(org_path(sim, "stats/sites"))
    assert "gave up after 5 attempts: HTTP 503" in str(err.value)
    assert err.value.attempts == 5
    assert client.calls == 5
    assert len(sleeps) == 4


def test_malformed_json_is_retried(sim, sleeps):
    client = client_for(sim, sleeps)
    sim.inject("*/stats/sites", "malformed", count=1)
    assert len(client.get_pages(org_path(sim, "stats/sites"))) == 12
    assert client.calls == 2


def test_malformed_json_forever_names_the_cause(sim, sleeps):
    client = client_for(sim, sleeps, max_retries=1)
    sim.inject("*/stats/sites", "malformed", count=100)
    with pytest.raises(MistRetryError, match="gave up after 2 attempts: malformed JSON"):
        client.get(org_path(sim, "stats/sites"))


def test_dropped_connection_is_retried(sim, sleeps):
    client = client_for(sim, sleeps)
    sim.inject("*/stats/sites", "drop", count=1)
    assert len(client.get_pages(org_path(sim, "stats/sites"))) == 12
    assert client.calls == 2


def test_slow_response_times_out_and_is_retried(sim, sleeps):
    client = client_for(sim, sleeps, timeout=(1, 0.3))
    sim.inject("*/stats/sites", "slow", count=1, delay=1.0)
    assert len(client.get_pages(org_path(sim, "stats/sites"))) == 12
    assert client.calls == 2


def test_every_attempt_counts_as_a_call_and_reset_clears(sim, sleeps):
    client = client_for(sim, sleeps)
    sim.inject("*/self", "500", count=1)
    client.get("/api/v1/self")
    assert client.calls == 2
    client.reset_calls()
    assert client.calls == 0


# ---------------------------------------------------------------------------------- clear errors

def test_401_with_a_wrong_token_says_the_token_was_refused(sim, sleeps):
    client = client_for(sim, sleeps, token="not-the-right-token")
    with pytest.raises(MistAuthError, match=r"401.*refused the API token") as err:
        client.get("/api/v1/self")
    assert err.value.status == 401
    assert client.calls == 1  # never retried


def test_401_without_a_token_says_none_was_sent(sim, sleeps):
    client = client_for(sim, sleeps, token=None)
    with pytest.raises(MistAuthError, match="no API token was sent"):
        client.get("/api/v1/self")


def test_404_names_org_id_and_cloud(sim, sleeps):
    client = client_for(sim, sleeps)
    with pytest.raises(MistNotFoundError, match=r"404.*org_id.*cloud") as err:
        client.get(org_path(sim, "stats/nothing-here"))
    assert err.value.status == 404
    assert client.calls == 1


def test_403_on_an_org_outside_the_token_says_it_lacks_rights_and_quotes_mist(sim, sleeps):
    client = client_for(sim, sleeps)
    with pytest.raises(MistForbiddenError,
                       match=r"403.*no rights.*Mist says: You do not have permission") as err:
        client.get("/api/v1/orgs/00000000-0000-0000-0000-000000000000/stats/sites")
    assert err.value.status == 403
    assert client.calls == 1


def test_errors_are_mistwatch_errors_that_exit_1(sim, sleeps):
    client = client_for(sim, sleeps, token="wrong-token-value")
    with pytest.raises(MistAPIError) as err:
        client.get("/api/v1/self")
    assert err.value.exit_code == 1


def test_links_to_another_host_are_refused_so_the_token_stays_home(sim, sleeps):
    client = client_for(sim, sleeps)
    with pytest.raises(MistAPIError, match="another host"):
        client.get("https://evil.example.com/api/v1/self")
    assert client.calls == 0


# ------------------------------------------------------------------------------------------ secrets

def test_token_never_appears_in_repr_errors_or_log_records(sim, sleeps, caplog_debug):
    caplog = caplog_debug
    client = client_for(sim, sleeps, max_retries=1)
    assert TOKEN not in repr(client) and "***" in repr(client)
    client.get("/api/v1/self")
    client.get_pages(org_path(sim, "stats/sites"))
    failures: list[Exception] = []
    for kind in ("500", "429", "malformed", "drop"):
        sim.inject("*/stats/devices", kind, count=100)
        try:
            client.get(org_path(sim, "stats/devices"))
        except MistAPIError as exc:
            failures.append(exc)
        sim.clear_faults()
    for bad in (MistClient(sim.url, TOKEN + "x", sleep=sleeps),):
        try:
            bad.get("/api/v1/self")
        except MistAPIError as exc:
            failures.append(exc)
    assert len(failures) == 5
    for exc in failures:
        assert TOKEN not in str(exc) and TOKEN not in repr(exc)
        assert TOKEN not in getattr(exc, "last_error", "")
    records = [r for r in caplog.records if r.name == "mistwatch.plugins.mist.client"]
    assert records, "the client logs each call at debug level"
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert "Authorization" not in record.getMessage()


def test_debug_log_names_method_path_status_and_time(sim, sleeps, caplog_debug):
    client_for(sim, sleeps).get("/api/v1/self")
    messages = [r.getMessage() for r in caplog_debug.records if r.name == "mistwatch.plugins.mist.client"]
    assert any(m.startswith("GET /api/v1/self -> 200 in ") and m.endswith(" ms") for m in messages)


# ---------------------------------------------------------------------------------- retry-after

def test_retry_after_accepts_seconds_and_http_dates():
    now = datetime(2026, 11, 27, 9, 0, 0, tzinfo=timezone.utc)
    later = now + timedelta(seconds=90)
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), now=now.timestamp()) == 90
    assert parse_retry_after((now - timedelta(seconds=5)).strftime("%a, %d %b %Y %H:%M:%S GMT"),
                             now=now.timestamp()) == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None

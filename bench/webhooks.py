"""HTTP face benchmark: webhook intake rate, webhook-to-mail latency, /metrics scrape time.

    python bench/webhooks.py                           # all three, default sizes
    python bench/webhooks.py --skip-scrape             # only the webhook figures
    python bench/webhooks.py --scrape-sites 1000 --events 2000

Everything is real: a ``mistwatch simulate`` process, a ``mistwatch daemon --listen`` process (waitress),
signed webhooks over loopback HTTP from client threads, mail through an aiosmtpd server on loopback.

1. Intake: ``--events`` signed ``device-updowns`` deliveries (one event each, every one new) POSTed by
   ``--clients`` threads as fast as the daemon answers; figure: events accepted (HTTP 202) per second.
   Target >= 500/s.
2. Latency: one device at a time goes down by webhook (event 11 minutes old, so ``ap-offline``,
   ``for: 10m``, fires at once); figure: time from sending the webhook to the mail arriving at the SMTP
   server (the notification has left the outbox), p50 and p95 over ``--latency-samples``. Target p95 < 2 s.
3. Scrape: a daemon on a ``--scrape-sites`` org (degraded scenario: alerts in the store) after its first
   cycle; figure: ``GET /metrics`` wall time over ``--scrapes`` scrapes, p50 and p95. Target < 50 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cycle import TOKEN, free_port  # the sibling benchmark's helpers
from fixtures_smtp import SmtpSink  # the tests' real SMTP server on loopback

from mistwatch.plugins.mist.simdata import SimulatedOrg
from mistwatch.plugins.mist.webhook import sample, sign

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-webhook-secret-0123456789"


def start_simulator(sites: int, scenario: str) -> tuple[subprocess.Popen, str, SimulatedOrg]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mistwatch", "simulate", "--port", str(port), "--sites",
                             str(sites), "--token", TOKEN, "--scenario", scenario],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/api/v1/self", headers={"Authorization": f"Token {TOKEN}"}, timeout=2).json()
            return proc, url, SimulatedOrg(sites=sites, scenario=scenario)  # same seed: same ids as served
        except (requests.RequestException, ValueError):
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("simulator did not start")


def start_daemon(folder: Path, url: str, org_id: str, smtp: SmtpSink | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    notifiers = [smtp.settings()] if smtp else [{"name": "console", "type": "console"}]
    (folder / "config.yaml").write_text(json.dumps({
        "mist": {"base_url": url, "token": TOKEN, "org_id": org_id, "webhook_secret": SECRET},
        "state_dir": "var", "reports": {"dir": "reports"}, "rules": [str(REPO / "rules")],
        "notifiers": notifiers, "group_wait": "0s", "http": {"listen": f"127.0.0.1:{port}", "threads": 8},
    }), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "mistwatch", "daemon", "--config", "config.yaml",
                             "--interval", "1h"], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=(folder / "daemon.log").open("w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if requests.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit("the daemon exited:\n" + (folder / "daemon.log").read_text())
        time.sleep(0.2)
    raise SystemExit("the daemon's first cycle did not finish")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def body_for(org: SimulatedOrg, g: int, at: float, connected: bool) -> bytes:
    site = org.sites[g // org.devices_per_site]
    return sample(org.org_id, site.id, org.device_mac(g), connected=connected, at=at, site_name=site.name,
                  device_name=org.device_name(g), device_type=org.device_type(g))


def post(session: requests.Session, url: str, body: bytes) -> int:
    return session.post(url, data=body, timeout=30, headers={
        "Content-Type": "application/json", "X-Mist-Signature-v2": sign(SECRET, body)}).status_code


def intake(base: str, org: SimulatedOrg, events: int, clients: int) -> dict:
    """Every delivery is a new event (distinct timestamp), alternating up and down across the org's
    devices, as a busy org would send them."""
    now = time.time()
    bodies = [body_for(org, i % org.device_count, now - 3600 + i * 0.001, connected=bool(i % 2))
              for i in range(events)]
    local = threading.local()
    host, port = base.removeprefix("http://").rsplit(":", 1)

    def send(body: bytes) -> int:
        # http.client on a kept-alive connection: requests costs the client more CPU than the
        # daemon spends per webhook, and both share the machine's cores
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        local.conn.request("POST", "/webhooks/mist", body=body, headers={
            "Content-Type": "application/json", "X-Mist-Signature-v2": sign(SECRET, body)})
        answer = local.conn.getresponse()
        answer.read()
        return answer.status

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(send, bodies))
    elapsed = time.perf_counter() - t0
    accepted = codes.count(202)
    return {"events": events, "clients": clients, "accepted": accepted, "seconds": round(elapsed, 2),
            "events_per_s": round(accepted / elapsed), "other_codes": sorted(set(codes) - {202})}


def latency(base: str, org: SimulatedOrg, smtp: SmtpSink, samples: int) -> dict:
    """AP after AP goes down by webhook, each at its own site: one new mail each."""
    aps = [g for g in range(org.device_count) if org.device_type(g) == "ap"]
    chosen = [aps[i * len(aps) // samples] for i in range(samples)]
    session = requests.Session()
    times = []
    for g in chosen:
        before = len(smtp.messages)
        t0 = time.perf_counter()
        code = post(session, base + "/webhooks/mist", body_for(org, g, time.time() - 11 * 60, connected=False))
        if code != 202:
            raise SystemExit(f"webhook answered {code}")
        deadline = t0 + 30
        while len(smtp.messages) == before and time.perf_counter() < deadline:
            time.sleep(0.002)
        if len(smtp.messages) == before:
            raise SystemExit("no mail within 30 s")
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"samples": samples, "p50_s": round(statistics.median(times), 3),
            "p95_s": round(times[int(0.95 * (len(times) - 1))], 3), "max_s": round(times[-1], 3)}


def scrape(base: str, scrapes: int) -> dict:
    session = requests.Session()
    session.get(base + "/metrics", timeout=30)  # first scrape builds the registry
    times = []
    size = 0
    for _ in range(scrapes):
        t0 = time.perf_counter()
        answer = session.get(base + "/metrics", timeout=30)
        times.append(time.perf_counter() - t0)
        size = len(answer.content)
    times.sort()
    return {"scrapes": scrapes, "bytes": size, "p50_ms": round(statistics.median(times) * 1000, 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=100, help="org size for the webhook figures")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--scrape-sites", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--skip-webhooks", action="store_true")
    parser.add_argument("--skip-scrape", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} CPU(s), Python {platform.python_version()}")

    if not args.skip_webhooks:
        sim, url, org = start_simulator(args.sites, "healthy")
        smtp = SmtpSink().start()
        try:
            with tempfile.TemporaryDirectory() as folder:
                daemon, base = start_daemon(Path(folder), url, org.org_id, smtp)
                try:
                    print("latency:", json.dumps(latency(base, org, smtp, args.latency_samples)))
                    print("intake: ", json.dumps(intake(base, org, args.events, args.clients)))
                finally:
                    stop(daemon)
        finally:
            smtp.stop()
            sim.kill()

    if not args.skip_scrape:
        sim, url, org = start_simulator(args.scrape_sites, "degraded")
        try:
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.perf_counter()
                daemon, base = start_daemon(Path(folder), url, org.org_id, None)
                print(f"scrape: first cycle at {args.scrape_sites} sites took {time.perf_counter() - t0:.1f} s")
                try:
                    alerts = requests.get(base + "/api/v1/alerts", timeout=60).json()["count"]
                    print("scrape: ", json.dumps({**scrape(base, args.scrapes), "open_alerts": alerts,
                                                  "sites": args.scrape_sites}))
                finally:
                    stop(daemon)
        finally:
            sim.kill()


if __name__ == "__main__":
    main()

"""The HTML report in a real browser (headless Chromium): what a person would see, on a desktop and a
phone, in the dark theme and printed to A4. Screenshots are kept under test-artifacts/ for a human to
look at (bench/report_pages.py keeps those of the demo's report and its page counts)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
from fixtures_reports import T0, alert, synthetic_org

from mistwatch.report.build import build_report, write_reports
from mistwatch.report.health import compute_health, health_metrics
from mistwatch.store.database import Store

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p and Path(p).exists()), None)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
EVIL = '<b>Dublin</b> & "HQ"'

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    """Eight days of a 4-site org whose worst site has a hostile name; yesterday was better."""
    folder = tmp_path_factory.mktemp("browser")
    with Store.open(folder / "state") as store:
        for day in range(8):
            now = T0 + timedelta(days=day)
            snap = synthetic_org(4, 3, at=now, names=[EVIL], degrade=0.12 if day == 7 else 0.0)
            alerts = [alert("site_wan_down", "critical", "s0000", EVIL, since=now - timedelta(hours=1),
                            summary=f"WAN down at {EVIL}", recommendation="Call the <ISP> & check the circuit")]
            run_id = store.start_run(now, "all")
            store.write_snapshot(run_id, snap)
            health = compute_health(snap, alerts)
            store.write_metrics(now, health_metrics(health))
            run = {"started_at": now, "duration_s": 0.8, "api_calls": 9, "errors": [], "mode": "all"}
            report = build_report(store, snap, health, alerts, ["Coverage fell at every site"], run, now)
            paths = write_reports(report, folder / "reports", now)
    return paths.html


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png_colours(path: Path) -> int:
    """How many distinct row fingerprints the image has (a blank page has one)."""
    data = path.read_bytes()
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    width, _ = png_size(path)
    stride = 1 + width * 4  # RGBA; chromium writes 8-bit RGBA
    return len({raw[i:i + stride][1:] for i in range(0, len(raw), stride)})


def test_the_report_reads_right_in_a_browser(report_file, tmp_path):
    done = chromium(tmp_path, "--dump-dom", report_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    # the title and the headline a person sees first
    assert "<title>Network report: Acme — Fri 27 Nov 08:00 UTC</title>" in dom
    assert "Executive summary" in dom
    # the worst site, by name, escaped: shown as text, never turned into a <b> element
    assert "&lt;b&gt;Dublin&lt;/b&gt; &amp; \"HQ\"" in dom
    assert "<b>Dublin</b>" not in dom
    assert "Call the &lt;ISP&gt; &amp; check the circuit" in dom
    summary = dom[dom.index("Worst sites"):dom.index("What changed since yesterday")]
    assert summary.index("&lt;b&gt;Dublin") < summary.index("Site 0001")
    # what changed since yesterday is there, with the SLE drop
    assert "Wi-Fi coverage SLE" in dom[dom.index("What changed since yesterday"):]
    # the script ran: the tables got their filter box
    assert dom.count('type="search"') >= 1
    # the sparklines survived parsing as SVG
    assert dom.count("<svg") >= 6  # the two org charts and the sparklines of the sites that need attention


@pytest.mark.parametrize(("name", "size"), [("desktop", (1280, 2000)), ("phone", (390, 1600))])
def test_a_screenshot_of_the_report_is_kept(report_file, tmp_path, name, size):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{name}.png"
    shot.unlink(missing_ok=True)
    done = chromium(tmp_path, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", report_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert png_size(shot) == size
    assert png_colours(shot) > 50, "the page rendered blank"


def test_the_dark_theme_follows_the_system_setting(report_file, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    light, dark = tmp_path / "light.png", ARTIFACTS / "report-dark-test.png"
    for shot, extra in ((light, []), (dark, ["--force-dark-mode"])):
        done = chromium(tmp_path, *extra, f"--screenshot={shot}", "--window-size=800,600", report_file.as_uri())
        assert done.returncode == 0, done.stderr[-2000:]
    assert corner_pixel(dark) != corner_pixel(light)
    assert sum(corner_pixel(dark)[:3]) < 100  # a dark background, not the light grey


def corner_pixel(path: Path) -> tuple[int, ...]:
    data = path.read_bytes()
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    return tuple(raw[1:5])  # first row, filter byte then RGBA of the first pixel (filter 0 or 1 keep it raw)


def test_the_report_prints_to_a4_pages(report_file, tmp_path):
    pdf = tmp_path / "report.pdf"
    done = chromium(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", report_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = pdf.read_bytes()
    sizes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
    assert sizes and all(abs(float(w) - 595.9) < 2 and abs(float(h) - 842.9) < 2 for w, h in sizes)  # A4
    assert 1 <= len(re.findall(rb"/Type\s*/Page(?![s\w])", data)) <= 3  # a 4-site org

"""Printed length of the HTML report: `mistwatch demo --sites N`, its degraded-day report printed to
A4 PDF by headless Chromium (the report's own print stylesheet), pages counted.

    python bench/report_pages.py                   # the demo's 12 sites and 1,000 sites
    python bench/report_pages.py --sites 12 --shots test-artifacts

``--shots DIR`` also keeps, for a human to look at: the page in the light and the dark theme
(``report-light.png``, ``report-dark.png``), the first printed page (``report-print-page1.png``, when
poppler's ``pdftoppm`` is installed) and ``report-pages.txt`` with the page counts.

Target (issue 11): the demo's 12 sites in at most 6 A4 pages.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("chromium is not installed (apt-get install chromium)")


def headless(work: Path, *args: str) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={work / 'chromium-profile'}"]
    subprocess.run([chromium(), *flags, *args], check=True, capture_output=True, timeout=600)


def pdf_pages(pdf: Path) -> int:
    """Page objects in the PDF (Chromium writes them uncompressed); no PDF library needed."""
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf.read_bytes()))


def measure(sites: int, shots: Path | None) -> tuple[int, int, float]:
    """(pages, HTML bytes, seconds to print) for the degraded day of a demo with ``sites`` sites."""
    with tempfile.TemporaryDirectory(prefix="mistwatch-pages-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "mistwatch", "demo", "--sites", str(sites), "--out", str(work / "demo")],
                       check=True, capture_output=True, timeout=1800)
        html = next((work / "demo").rglob("degraded-day.html"))
        pdf = work / "report.pdf"
        started = time.perf_counter()
        headless(work, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", html.as_uri())
        seconds = time.perf_counter() - started
        pages = pdf_pages(pdf)
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            headless(work, f"--screenshot={shots / 'report-light.png'}", "--window-size=1280,2200", html.as_uri())
            headless(work, "--force-dark-mode", f"--screenshot={shots / 'report-dark.png'}",
                     "--window-size=1280,2200", html.as_uri())
            if shutil.which("pdftoppm"):
                subprocess.run(["pdftoppm", "-png", "-r", "70", "-f", "1", "-l", "2", str(pdf),
                                str(shots / "report-print-page")], check=True, timeout=120)
        return pages, html.stat().st_size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, action="append", help="sites in the demo org (repeatable)")
    parser.add_argument("--shots", type=Path, help="keep screenshots and page counts here (first --sites only)")
    args = parser.parse_args()
    lines = []
    for i, sites in enumerate(args.sites or [12, 1000]):
        pages, size, seconds = measure(sites, args.shots if i == 0 else None)
        line = f"{sites} sites: {pages} A4 pages ({size / 1024:.0f} KB of HTML, printed in {seconds:.1f} s)"
        print(line, flush=True)
        lines.append(line)
    if args.shots is not None:
        (args.shots / "report-pages.txt").write_text(
            "Printed length of the demo's degraded-day report (bench/report_pages.py, headless Chromium, A4):\n"
            + "\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

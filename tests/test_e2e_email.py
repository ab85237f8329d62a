"""End to end by email: the simulator replayed with --now through the CLI, mail to a real SMTP sink."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from test_e2e import REPO, mistwatch

DAY1 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(days=1)


@pytest.fixture
def mail_org(tmp_path, simulator, smtp_sink):
    """The shipped routing (critical and major by email, grouped per site) pointed at the sink."""
    shipped = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    config = {
        "mist": {"base_url": simulator.url, "token": simulator.token, "org_id": simulator.org.org_id},
        "state_dir": "var",
        "reports": {"dir": "reports"},
        "rules": [str(REPO / "rules")],
        "notifiers": [{"name": "console", "type": "console"}, smtp_sink.settings(name="email")],
        "routes": shipped["routes"],
        "inhibit": shipped["inhibit"],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return tmp_path


def cycle(folder, simulator, when: datetime, scenario: str) -> None:
    simulator.org.set_scenario(scenario)
    simulator.org.now = when
    done = mistwatch("run", "--now", when.isoformat(), cwd=folder)
    assert done.returncode == 0, done.stderr[-2000:]


def names_in(text: str, names: list[str]) -> set[str]:
    return {n for n in names if re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", text)}


def body(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def test_degraded_sites_are_mailed_once_per_site_and_resolved_mails_thread_under_them(
        mail_org, simulator, smtp_sink):
    org = simulator.org
    all_names = [org.site_name(s) for s in org.site_ids()]
    affected = {org.site_name(s) for s in org.affected_sites("degraded")}

    for minutes in (0, 15, 30):
        cycle(mail_org, simulator, DAY1 + timedelta(minutes=minutes), "healthy")
    assert smtp_sink.messages == []

    for minutes in (0, 15, 30):
        cycle(mail_org, simulator, DAY2 + timedelta(minutes=minutes), "degraded")
    firing = list(smtp_sink.messages)
    mailed = set()
    for message in firing:
        named = names_in(message["Subject"], all_names)
        assert len(named) == 1, message["Subject"]
        assert names_in(body(message), all_names) <= affected, message["Subject"]
        mailed |= named
    assert mailed == affected

    cycle(mail_org, simulator, DAY2 + timedelta(hours=1, minutes=30), "degraded")
    assert len(smtp_sink.messages) == len(firing), "an hour later, still degraded: no duplicate"

    cycle(mail_org, simulator, DAY2 + timedelta(hours=3), "recovered")
    resolved = smtp_sink.messages[len(firing):]
    assert {next(iter(names_in(m["Subject"], all_names))) for m in resolved} == affected
    first_of_site = {}
    for message in firing:
        first_of_site.setdefault(next(iter(names_in(message["Subject"], all_names))), message["Message-ID"])
    for message in resolved:
        assert "RESOLVED" in message["Subject"]
        site = next(iter(names_in(message["Subject"], all_names)))
        assert message["In-Reply-To"] == first_of_site[site]
    assert simulator.token not in "".join(m.as_string() for m in smtp_sink.messages)

"""Evaluator properties: the sparse path (with alert state) agrees with the complete one, and
evaluation is pure."""

from __future__ import annotations

import random
from datetime import timedelta

from fixtures_rules import REPO, T0, device, site

from mistwatch.model import Snapshot
from mistwatch.plugins.rulekinds import builtin_kinds
from mistwatch.rules.evaluator import MemoryHistory, evaluate
from mistwatch.rules.lifecycle import advance
from mistwatch.rules.loader import load_rules


def _org(rng: random.Random, sites: int = 40) -> list:
    entities = []
    for s in range(sites):
        bad = rng.random() < 0.3
        entities.append(site(f"s{s}", f"Site {s}", sle__wifi__coverage=rng.choice([0.5, 0.7, 0.95]),
                             sle__wifi__capacity=0.6 if bad else 0.97, site__clients=rng.choice([3, 40, 100]),
                             site__devices_total=6, site__devices_connected=4 if bad else 6,
                             site__switch_total=1, site__switch_connected=1, site__gateway_total=1,
                             site__gateway_connected=0 if bad and rng.random() < 0.5 else 1,
                             site__ap_total=4, site__ap_connected=2 if bad else 4,
                             site__ap_connected_ratio=0.5 if bad else 1.0))
        for d in range(3):
            entities.append(device(f"d{s}-{d}", f"ap-{s}-{d}", ("ap", "switch", "gateway")[d], site_id=f"s{s}",
                                   site_name=f"Site {s}", device__connected=0.0 if bad and d == 0 else 1.0,
                                   device__cpu=rng.choice([20, 85, 99]), device__uptime=1000.0 + d))
    return entities


def test_sparse_evaluation_finds_exactly_what_the_complete_one_finds():
    ruleset = load_rules([REPO / "rules"], builtin_kinds())
    rng = random.Random(3)
    history = MemoryHistory()
    history.add_snapshot(Snapshot(T0, entities=_org(random.Random(9))))
    now = T0 + timedelta(days=1)
    snapshot = Snapshot(now, entities=_org(rng))
    history.add_snapshot(snapshot)
    complete = evaluate(ruleset, snapshot, history, now)
    sparse = evaluate(ruleset, snapshot, history, now, alerts={})
    active = sorted((f.key, f.severity, f.value, f.summary) for f in complete.active)
    assert active and active == sorted((f.key, f.severity, f.value, f.summary) for f in sparse.active)
    assert len(complete.findings) > len(sparse.findings)  # complete mode also lists the quiet ones

    # and with alert state: the same states whichever way the previous cycle was evaluated
    alerts_a = {a.key: a for a in advance({}, complete, ruleset, now)[0]}
    alerts_b = {a.key: a for a in advance({}, sparse, ruleset, now)[0]}
    assert {k: a.state for k, a in alerts_a.items()} == {k: a.state for k, a in alerts_b.items()}


def test_evaluation_is_pure_same_inputs_same_findings_and_nothing_written():
    ruleset = load_rules([REPO / "rules"], builtin_kinds())
    snapshot = Snapshot(T0, entities=_org(random.Random(5)))
    history = MemoryHistory()
    history.add_snapshot(snapshot)
    before = history.values_at("site.clients", T0)
    first = evaluate(ruleset, snapshot, history, T0, alerts={})
    second = evaluate(ruleset, snapshot, history, T0, alerts={})
    assert [(f.key, f.severity, f.summary) for f in first.findings] == [
        (f.key, f.severity, f.summary) for f in second.findings]
    assert history.values_at("site.clients", T0) == before


def test_a_rule_whose_kind_raises_is_a_note_and_freezes_only_its_own_alerts(tmp_path):
    from fixtures_rules import Cycles

    from mistwatch import RuleKind
    from mistwatch.rules.evaluator import Result

    calls = {"n": 0}

    def compile_flaky(spec):
        def check(ctx):
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError("plugin bug")
            for entity in ctx.entities():
                yield Result(entity.key, entity.labels, "minor", value=1.0)
        return check

    kinds = {**builtin_kinds(), "flaky": RuleKind(name="flaky", compile=compile_flaky, default_scope="site")}
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - {id: flaky, kind: flaky}\n"
                    "  - {id: low, kind: threshold, metric: site.clients, below: 5}\n", encoding="utf-8")
    cycles = Cycles(load_rules([path], kinds))
    cycles.run([site(site__clients=1)])
    cycles.step([site(site__clients=1)])
    assert {a.rule_id: a.state for a in cycles.alerts.values()} == {"flaky": "firing", "low": "firing"}
    assert any("flaky: rule failed: RuntimeError: plugin bug" in n for n in cycles.notes())


class _Windows:
    """A history whose ``hourly`` answers each read with a new (empty) roll-up, counting reads."""

    def __init__(self) -> None:
        self.reads = 0

    def hourly(self, metric, start, end, stats=()):
        from mistwatch.store.records import HourlyRollups

        self.reads += 1
        return HourlyRollups(metric, [])


def _context(history):
    from types import SimpleNamespace

    from mistwatch.rules.evaluator import Evaluation, RuleContext, _Shared

    shared = _Shared(Snapshot(taken_at=T0), history, T0, None)
    return lambda: RuleContext(SimpleNamespace(id="r"), shared, Evaluation(at=T0))


def test_a_rule_asking_for_the_same_hourly_window_again_shares_one_read():
    history = _Windows()
    context = _context(history)()
    first = context.hourly("site.clients", T0 - timedelta(days=7), T0)
    again = context.hourly("site.clients", T0 - timedelta(days=7), T0)
    assert again is first and history.reads == 1


def test_an_evaluation_lets_go_of_a_rules_hourly_window_when_the_rule_is_done():
    import gc
    import weakref

    from mistwatch.rules.loader import RuleSet

    held = []

    def reads_a_window(ctx):
        held.append(weakref.ref(ctx.hourly("site.clients", T0 - timedelta(days=7), T0)))
        return []

    def checks_it_is_gone(ctx):
        gc.collect()
        held.append(held[0]() is None)
        return []

    rules = [rule for rule in load_rules([REPO / "rules"], builtin_kinds()).rules if rule.enabled][:2]
    rules[0].check, rules[1].check = reads_a_window, checks_it_is_gone
    evaluate(RuleSet(rules=rules), Snapshot(taken_at=T0), _Windows(), T0, alerts={})
    assert held[1] is True


def test_an_evaluation_lets_go_of_an_hourly_window_once_a_rule_reads_another():
    import gc
    import weakref

    context = _context(_Windows())
    first = weakref.ref(context().hourly("site.clients", T0 - timedelta(days=7), T0))
    context().hourly("device.memory", T0 - timedelta(hours=24), T0)
    gc.collect()
    assert first() is None

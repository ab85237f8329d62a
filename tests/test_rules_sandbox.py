"""The sandbox of when: expressions and templates: escapes are rejected, at load time when possible."""

from __future__ import annotations

import pytest
from fixtures_rules import Cycles, device, rules_from, site

from mistwatch.errors import ConfigError
from mistwatch.rules.expr import Expression, ExpressionError, Template

ESCAPES = [
    "''.__class__",
    "labels.__class__",
    "cycler.__init__.__globals__",
    "labels['__class__']",
    "value.__class__.__mro__",
    "labels._private",
    "''.format",
    "(1).__class__.__subclasses__()",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_escapes_in_expressions_are_rejected(source):
    with pytest.raises(ExpressionError):
        Expression(source).evaluate({"labels": {}, "value": 1})


@pytest.mark.parametrize("source", ESCAPES)
def test_escapes_in_templates_are_rejected(source):
    with pytest.raises(ExpressionError):
        Template("{{ " + source + " }}").render({"labels": {}, "value": 1})


@pytest.mark.parametrize("source", [
    "labels.copy()", "labels.pop('site_name')", "labels.update({})", "labels | attr('clear')",
])
def test_methods_outside_the_allow_list_fail_at_run_time(source):
    with pytest.raises(ExpressionError):
        Expression(source).evaluate({"labels": {"site_name": "x"}})


@pytest.mark.parametrize("source", ["range(10)", "lipsum()", "joiner()", "namespace()", "dict(a=1)"])
def test_jinja_globals_are_not_available(source):
    with pytest.raises(ExpressionError):
        Expression(source).evaluate({})


def test_huge_powers_are_refused():
    with pytest.raises(ExpressionError):
        Expression("10 ** 100000000").evaluate({})


def test_allowed_reads_work():
    expr = Expression("labels.get('site_name', '').lower().startswith('dub') and metrics['site.clients'] > 3")
    assert expr.evaluate({"labels": {"site_name": "Dublin"}, "metrics": {"site.clients": 4}}) is True
    assert Template("{{ labels.site_name | upper }} {{ 0.873 | pct }}").render(
        {"labels": {"site_name": "Dublin"}}) == "DUBLIN 87%"


def test_templates_are_strict_about_undefined_names():
    with pytest.raises(ExpressionError):
        Template("{{ labels.site_nmae }}").render({"labels": {"site_name": "x"}})


@pytest.mark.parametrize(("key", "source"), [
    ("when", "labels.__class__"),
    ("summary", "{{ ''.__class__ }}"),
    ("summary", "{{ cycler.__init__.__globals__ }}"),
    ("recommendation", "{{ labels.__class__.__name__ }}"),
])
def test_rule_files_with_escapes_fail_to_load_with_file_and_line(tmp_path, key, source):
    text = f"id: x\nkind: threshold\nmetric: site.clients\nbelow: 1\n{key}: \"{source}\"\n"
    with pytest.raises(ConfigError) as raised:
        rules_from(tmp_path, text)
    assert raised.value.line == 5 and raised.value.key == key


def test_a_template_that_fails_at_run_time_gives_a_note_not_a_crash(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        id: x
        kind: threshold
        metric: site.clients
        below: 5
        summary: "{{ labels.site_name }} {{ labels.timezone }}"
    """))
    cycles.run([site(site__clients=1)])
    assert cycles.only().state == "firing"
    assert any("summary template failed" in n for n in cycles.notes())


@pytest.mark.parametrize("source", [
    "{{ ('a' * 10**10) | length }}",
    "{{ (10**10 * [1]) | length }}",
    "{% for i in [1] %}{{ ('a' * 10**10) | length }}{% endfor %}",  # Jinja's own sandbox path
])
def test_repeating_a_text_or_list_into_gigabytes_is_refused(source):
    with pytest.raises(ExpressionError, match="too large"):
        Template(source).render({})


def test_small_repeats_still_work():
    assert Template("{{ '-' * 3 }}{{ ([0] * 2) | length }}").render({}) == "---2"
    assert Expression("'ab' * 2 == 'abab'").test({})


# -- exhaustion: every bound stops a rule quickly, in little memory ----------------------------------

from mistwatch.rules.expr import LimitExceeded  # noqa: E402


@pytest.mark.parametrize("source", [
    "((9**1000)**1000)**1000",
    "'x'.join(['a' * 100000] * 100000)",
    "('a' * 100000).replace('a', 'b' * 1000)",
    "'%100000000d' % 1",
    "'%*d' % (100000000, 1)",
    "([[1] * 100000] * 100000) | join",
    "([[1] * 100000] * 100000) | string",
])
def test_expressions_that_would_exhaust_cpu_or_memory_hit_a_limit(source):
    with pytest.raises(LimitExceeded):
        Expression(source).evaluate({})


@pytest.mark.parametrize("source", [
    "{{ ((9**1000)**1000)**1000 }}",
    "{{ 'x' | center(100000000) }}",
    "{{ 'a\nb' | indent(100000000) }}",
    "{{ '%100000000d' | format(1) }}",
    "{{ ('a' * 100000) | replace('a', 'b' * 1000) }}",
    "{{ (['a' * 100000] * 100000) | join }}",
    "{% for a in [1] * 100000 %}{% for b in [1] * 100000 %}{{ a }}{% endfor %}{% endfor %}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
    "{% set a = ['x' * 1000] * 10 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ (c ~ '') | length }}",
])
def test_templates_that_would_exhaust_cpu_or_memory_hit_a_limit(source):
    with pytest.raises(LimitExceeded):
        Template(source).render({})


def test_ordinary_filters_still_work_within_the_bounds():
    assert Template("{{ 'a-b' | replace('-', '+') }} {{ '%05.1f' | format(3.14159) }} {{ [1, 2] | join(', ') }}"
                    "{% for k, v in labels.items() %} {{ k }}={{ v }}{% endfor %}").render(
        {"labels": {"site": "x"}}) == "a+b 003.1 1, 2 site=x"


def test_a_recursive_macro_fails_rules_check_with_file_and_key(tmp_path):
    text = ("id: x\nkind: threshold\nmetric: site.clients\nbelow: 1\n"
            "summary: \"{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}\"\n")
    with pytest.raises(ConfigError) as raised:
        rules_from(tmp_path, text)
    assert raised.value.key == "summary" and raised.value.line == 5
    assert "recursion too deep" in str(raised.value)


def test_a_rule_that_hits_a_limit_at_run_time_is_skipped_and_the_others_still_fire(tmp_path):
    cycles = Cycles(rules_from(tmp_path, """
        rules:
          - id: greedy
            kind: threshold
            metric: site.clients
            below: 5
            when: "(labels.site_name * 100) | length > 0"
          - id: plain
            kind: threshold
            metric: site.clients
            below: 5
    """))
    cycles.run([site(name="x" * 100_000, site__clients=1)])  # a 100 KB name from Mist
    assert cycles.only().rule_id == "plain"
    (note,) = [n for n in cycles.notes() if "greedy" in n]
    assert "skipped this cycle" in note and "rules.yaml:3 when:" in note


def test_a_rule_past_its_time_limit_is_skipped(tmp_path):
    from fixtures_rules import T0

    from mistwatch.model import Snapshot
    from mistwatch.rules.evaluator import MemoryHistory, evaluate

    ruleset = rules_from(tmp_path, """
        id: slow
        kind: threshold
        scope: device
        metric: device.connected
        below: 1
        summary: "{% for a in [1] * 300 %}{% for b in [1] * 300 %}{% endfor %}{% endfor %}down"
    """)
    devices = [device(f"d{i}", device__connected=0) for i in range(200)]
    evaluation = evaluate(ruleset, Snapshot(T0, entities=devices), MemoryHistory(), T0, rule_time_limit=0.05)
    assert not [f for f in evaluation.findings if f.active]
    assert any("skipped this cycle" in str(n) and "took too long" in str(n) for n in evaluation.notes), \
        evaluation.notes

"""The sandbox of when: expressions and templates: escapes are rejected, at load time when possible."""

from __future__ import annotations

import pytest
from fixtures_rules import Cycles, rules_from, site

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

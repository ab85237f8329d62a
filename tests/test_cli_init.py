"""`mistwatch init`, MISTWATCH_CONFIG and the shipped config template."""

from __future__ import annotations

from pathlib import Path

import pytest

from mistwatch.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_init_writes_a_config_and_the_rules_with_their_tests_that_pass(tmp_path, capsys, monkeypatch):
    main(["init", str(tmp_path / "site")])
    folder = tmp_path / "site"
    assert (folder / "config.yaml").is_file()
    assert sorted(p.name for p in (folder / "rules").glob("*.yaml")) == sorted(
        p.name for p in (REPO / "rules").glob("*.yaml"))
    assert sorted(p.name for p in (folder / "rules" / "tests").glob("*.yaml")) == sorted(
        p.name for p in (REPO / "rules" / "tests").glob("*.yaml"))
    capsys.readouterr()
    main(["rules", "test", *map(str, sorted((folder / "rules" / "tests").glob("*.yaml")))])
    assert " passed, 0 failed" in capsys.readouterr().out
    monkeypatch.setenv("MIST_API_TOKEN", "t" * 20)
    monkeypatch.setenv("MIST_ORG_ID", "org-1")
    main(["config", "check", "--config", str(folder / "config.yaml")])


def test_init_never_overwrites_without_force(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("mine\n", encoding="utf-8")
    with pytest.raises(SystemExit) as refused:
        main(["init", str(tmp_path)])
    assert refused.value.code == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") == "mine\n"
    assert not (tmp_path / "rules").exists()
    main(["init", str(tmp_path), "--force"])
    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") != "mine\n"


def test_the_packaged_config_template_is_the_repositorys_config():
    assert (REPO / "core" / "templates" / "config.yaml").read_text(encoding="utf-8") == \
        (REPO / "config.yaml").read_text(encoding="utf-8")


def test_mistwatch_config_names_the_config_when_no_option_is_given(tmp_path, monkeypatch, capsys):
    main(["init", str(tmp_path)])
    monkeypatch.setenv("MISTWATCH_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("MIST_API_TOKEN", "t" * 20)
    monkeypatch.setenv("MIST_ORG_ID", "org-1")
    monkeypatch.chdir(tmp_path / "rules")  # no config.yaml here
    capsys.readouterr()
    main(["config", "check"])
    assert "org-1" in capsys.readouterr().out


def test_a_missing_config_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MISTWATCH_CONFIG", raising=False)
    with pytest.raises(SystemExit) as failed:
        main(["status"])
    assert failed.value.code == 2
    err = capsys.readouterr().err
    assert "config.yaml: file not found (looked for " in err
    assert str(tmp_path.resolve() / "config.yaml") in err and "MISTWATCH_CONFIG" in err
    assert err.count("\n") == 1

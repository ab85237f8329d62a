"""The rules stage: loading rule files, sandboxed expressions, evaluation, alert lifecycle, rule tests."""

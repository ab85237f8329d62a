"""The default rule pack: YAML rule files shipped with mistwatch (data, read by path)."""

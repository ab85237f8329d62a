"""The SQLite store under ``state_dir``: metric history, alert states, runs, key-value state, and the
notification tables. ``database`` opens, migrates and guards it; ``history`` reads and writes metric
samples; ``schema`` holds every table as ordered migrations; ``records`` the row types and encodings."""

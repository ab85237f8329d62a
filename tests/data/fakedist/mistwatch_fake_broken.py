"""A plugin that cannot even be imported."""

raise RuntimeError("fake_broken cannot be imported")

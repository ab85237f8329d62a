"""A plugin that imports fine but raises inside its registration hook."""

from mistwatch import hookimpl


@hookimpl
def mistwatch_notifiers():
    raise ValueError("boom inside the hook")

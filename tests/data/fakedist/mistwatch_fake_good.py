"""A well-behaved third-party plugin: one notifier type, ``fake-good``."""

from mistwatch import Delivery, Notifier, hookimpl


def send(settings, notifications):
    return [Delivery(n.id, ok=True) for n in notifications]


@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="fake-good", send=send,
                   settings_schema={"type": "object", "properties": {"level": {"type": "integer"}},
                                    "additionalProperties": False})

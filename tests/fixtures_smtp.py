"""Real SMTP servers on loopback (aiosmtpd) for the email notifier tests.

``smtp_sink`` is a plain relay without authentication. ``make_smtp_sink(...)`` makes others:
STARTTLS or implicit TLS with a certificate from a test CA made at test time (trustme), AUTH LOGIN.
Every sink keeps the messages it accepted (parsed) and has a failure mode:

- ``sink.stop()`` / ``sink.start()``: connections refused while stopped (same port after restart);
- ``sink.fail = "451"`` or ``"550"``: every recipient is refused with that code (temporary/permanent);
- ``sink.fail = None``: accept again.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest

REFUSALS = {"451": "451 4.3.0 Try again later", "550": "550 5.1.1 Mailbox unavailable"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.sink.fail:
            return REFUSALS[self.sink.fail]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=default_policy)
        self.sink.messages.append(message)
        self.sink.envelopes.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                    "raw": envelope.content})
        return "250 Message accepted"


@dataclass
class SmtpSink:
    starttls: bool = False
    implicit_tls: bool = False
    login: tuple[str, str] | None = None  # (username, password) required via AUTH LOGIN
    server_context: ssl.SSLContext | None = None
    ca_file: str | None = None
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    fail: str | None = None
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)  # user names that logged in successfully
    _controller: Any = None

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = (isinstance(auth_data, LoginPassword) and self.login is not None
              and auth_data.login.decode() == self.login[0] and auth_data.password.decode() == self.login[1])
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        kwargs: dict[str, Any] = {}
        if self.starttls:
            kwargs.update(tls_context=self.server_context, require_starttls=True)
        if self.implicit_tls:
            kwargs.update(ssl_context=self.server_context)
        if self.login:
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=self.starttls or self.implicit_tls,
                          auth_exclude_mechanism=["PLAIN"])
        self._controller = Controller(_Handler(self), hostname=self.host, port=self.port, **kwargs)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def settings(self, **extra: Any) -> dict[str, Any]:
        """An email notifier entry pointing at this sink."""
        entry: dict[str, Any] = {"name": "mail", "type": "email", "smtp_host": self.host, "smtp_port": self.port,
                                 "from": "mistwatch@example.com", "to": ["noc@example.com"], "timeout": 5}
        if self.starttls:
            entry["starttls"] = True
        if self.implicit_tls:
            entry["ssl"] = True
        if self.ca_file:
            entry["ca_file"] = self.ca_file
        if self.login:
            entry.update(username=self.login[0], password=self.login[1])
        entry.update(extra)
        return entry


@pytest.fixture(scope="session")
def smtp_test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """A throwaway CA (trustme) and the path of its PEM, for TLS sinks and the client's ca_file."""
    import trustme

    ca = trustme.CA()
    path = Path(tmp_path_factory.mktemp("smtp-ca")) / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


@pytest.fixture
def make_smtp_sink(smtp_test_ca: tuple[Any, str]):
    """Factory: ``make_smtp_sink(starttls=True, login=("user", "pass"))``; stopped after the test."""
    ca, ca_path = smtp_test_ca
    made: list[SmtpSink] = []

    def make(**options: Any) -> SmtpSink:
        sink = SmtpSink(**options)
        if sink.starttls or sink.implicit_tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
            sink.server_context = context
            sink.ca_file = ca_path
        made.append(sink.start())
        return sink

    yield make
    for sink in made:
        sink.stop()


@pytest.fixture
def smtp_sink(make_smtp_sink) -> SmtpSink:
    """A plain SMTP relay on loopback: no TLS, no authentication."""
    return make_smtp_sink()

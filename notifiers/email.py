"""Email notifier: smtplib through a plain relay (no auth, as corporate relays are), STARTTLS or
implicit TLS, with an optional login. Each message is multipart text + HTML rendered from Jinja2
templates (sandboxed; HTML autoescaped, CSS inline so mail clients render it). Users can override
``email.txt`` / ``email.html`` with a ``templates_dir`` setting.

Threading: the Message-ID is derived from the notification id, and a message of a group that already
had one carries In-Reply-To/References to the group's first message, so a resolved mail threads under
its firing mail. SMTP 5xx answers (e.g. 550) are permanent failures, 4xx and connection problems are
temporary and retried by the outbox.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import unicodedata
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

from mistwatch.hookspecs import Notifier, hookimpl
from mistwatch.model import Delivery, Notification
from mistwatch.sanitize import html as html_escape
from mistwatch.secrets import redact, register

TEMPLATES = Path(__file__).parent / "templates"
#: Relays refuse big mail (Postfix's default message_size_limit is 10,240,000 bytes) and base64 makes
#: an attachment a third bigger: attachments past this many bytes in all are left out, and the mail
#: says so, rather than the whole message bouncing as a permanent failure.
MAX_ATTACHMENT_BYTES = 7_000_000

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["smtp_host", "from", "to"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "type": {"const": "email"},
        "smtp_host": {"type": "string", "minLength": 1, "description": "SMTP relay host name."},
        "smtp_port": {"type": "integer", "minimum": 1, "maximum": 65535,
                      "description": "Default 465 with ssl, 587 with starttls, else 25."},
        "from": {"type": "string", "pattern": "@", "x-message": "must be an email address"},
        "to": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "@"},
               "x-message": "must be a list of email addresses"},
        "cc": {"type": "array", "items": {"type": "string", "pattern": "@"}},
        "starttls": {"type": "boolean", "description": "Upgrade with STARTTLS after connecting."},
        "ssl": {"type": "boolean", "description": "Implicit TLS from the first byte (usually port 465)."},
        "ca_file": {"type": "string", "description": "PEM file of CA certificates to trust for TLS."},
        "username": {"type": "string"},
        "password": {"type": "string", "description": "Use ${VAR}; it is kept out of every output."},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds (default 30)."},
        "subject_prefix": {"type": "string", "description": "Default [mistwatch]."},
        "templates_dir": {"type": "string", "description": "Folder with email.txt / email.html overrides."},
        "attach_report": {"type": "boolean", "description": "Attach the latest HTML report."},
        "send_resolved": {"type": "boolean", "description": "Send resolved messages (default true)."},
    },
}


class _ConnectionLost(Exception):
    pass


def _environment(templates_dir: str | None) -> Any:
    from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, select_autoescape
    from jinja2.sandbox import SandboxedEnvironment

    loaders = [FileSystemLoader(str(templates_dir))] if templates_dir else []
    loaders.append(FileSystemLoader(str(TEMPLATES)))
    return SandboxedEnvironment(loader=ChoiceLoader(loaders), undefined=StrictUndefined,
                                autoescape=select_autoescape(enabled_extensions=("html",),
                                                             default_for_string=False),
                                trim_blocks=True, lstrip_blocks=True)


def render(settings: Mapping[str, Any], n: Notification) -> tuple[str, str]:
    """(text, html) bodies of a notification, redacted. A notification that arrives with its own HTML
    (the daily digest) is sent as it is; alert notifications are rendered from the templates."""
    from mistwatch.render import SEVERITY_COLORS, alert_rows

    if n.html:
        return redact(n.text or n.title), redact(n.html)
    if n.kind == "digest" and n.html:
        # the digest comes fully rendered: mistwatch.report.build's autoescaped executive summary
        return redact(n.text or n.title), redact(n.html)
    env = _environment(settings.get("templates_dir"))
    rows = alert_rows(n)
    context = {
        "n": n, "title": n.title, "headline": n.data.get("headline", n.title), "kind": n.kind,
        "firing": [r for r in rows if r.state == "firing"], "resolved": [r for r in rows if r.state == "resolved"],
        "reminder": bool(n.data.get("reminder")), "colors": SEVERITY_COLORS, "group": dict(n.group),
        "severity": n.data.get("severity", "info"), "text": n.text,
        "color": SEVERITY_COLORS.get(str(n.data.get("severity", "info")), SEVERITY_COLORS["info"]),
    }
    text = env.get_template("email.txt").render(context)
    html = env.get_template("email.html").render(context)
    return redact(text), redact(html)


def check_templates(settings: Mapping[str, Any], sample: Notification) -> str | None:
    """Render both templates with a sample notification; a one-line problem, or None when they work.
    A problem with a setting starts with its key (``templates_dir: ...``)."""
    from jinja2 import TemplateError, TemplateSyntaxError

    folder = settings.get("templates_dir")
    if not folder:
        return None
    if not os.path.isdir(folder):
        return f"templates_dir: not a folder: {folder}"
    try:
        render(settings, sample)
    except TemplateSyntaxError as exc:
        return f"templates_dir: template {exc.name} line {exc.lineno}: {exc.message}"
    except TemplateError as exc:
        return f"templates_dir: template error: {type(exc).__name__}: {exc}"
    return None


def _domain(address: str) -> str:
    address = parseaddr(address)[1] or address
    domain = address.rsplit("@", 1)[-1].strip() if "@" in address else ""
    return domain or "mistwatch.invalid"


def message_id(notification_id: str, sender: str) -> str:
    return f"<{notification_id}@{_domain(sender)}>"


def header_value(value: Any) -> str:
    """``value`` made safe for one header line: every control character and line or paragraph
    separator (LF, CR, U+0085, U+2028, ...) becomes a space, runs of spaces one space.

    A Mist site name holding a line break would otherwise make the email library refuse the header
    ("Header values may not contain linefeed"), and every message of that site would fail forever;
    and a name is never allowed to add a header of its own. The body keeps the name as it is."""
    text = str(value)
    folded = "".join(" " if unicodedata.category(c) in _NOT_IN_HEADERS else c for c in text)
    return re.sub(" {2,}", " ", folded).strip() if folded != text else text


#: Unicode categories folded out of headers: controls (Cc: C0, DEL, C1 incl. U+0085), line (Zl,
#: U+2028) and paragraph (Zp, U+2029) separators; str.splitlines() splits on all of them.
_NOT_IN_HEADERS = frozenset({"Cc", "Zl", "Zp"})


def build_message(settings: Mapping[str, Any], n: Notification) -> EmailMessage:
    sender = header_value(settings["from"])
    prefix = str(settings.get("subject_prefix", "[mistwatch]")).strip()
    headline = str(n.data.get("headline") or n.title)
    msg = EmailMessage()
    # every header goes through header_value: names from Mist are hostile
    msg["Subject"] = header_value(redact(f"{prefix} {headline}".strip()))
    msg["From"] = sender
    msg["To"] = header_value(", ".join(settings["to"]))
    if settings.get("cc"):
        msg["Cc"] = header_value(", ".join(settings["cc"]))
    msg["Date"] = format_datetime(n.created_at)
    msg["Message-ID"] = header_value(message_id(n.id, sender) if n.id else make_msgid(domain=_domain(sender)))
    if n.thread_id:
        msg["In-Reply-To"] = header_value(message_id(n.thread_id, sender))
        msg["References"] = header_value(message_id(n.thread_id, sender))
    msg["X-Mistwatch-Kind"] = header_value(n.kind)
    msg["Auto-Submitted"] = "auto-generated"
    text, html = render(settings, n)
    attachments, left_out = _within_budget(n)
    if left_out:
        note = (f"Not attached, too big for mail ({left_out}); "
                "the report is in the reports folder of the mistwatch host.")
        text += f"\n{note}\n"
        paragraph = f"<p style=\"color:#6b7280\">{html_escape(note)}</p>"
        html = html.replace("</body>", paragraph + "</body>") if "</body>" in html else html + paragraph
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    for att in attachments:
        maintype, _, subtype = att.mimetype.partition("/")
        msg.add_attachment(att.content, maintype=maintype or "application",
                           subtype=subtype or "octet-stream", filename=att.filename)
    return msg


def _within_budget(n: Notification) -> tuple[list[Any], str]:
    """The attachments that fit :data:`MAX_ATTACHMENT_BYTES` (in order), and a description of the rest."""
    kept, left_out, total = [], [], 0
    for att in n.attachments:
        if total + len(att.content) <= MAX_ATTACHMENT_BYTES:
            kept.append(att)
            total += len(att.content)
        else:
            left_out.append(f"{att.filename}, {len(att.content) / 1e6:.1f} MB")
    return kept, "; ".join(left_out)


def _tls_context(settings: Mapping[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.get("ca_file"):
        context.load_verify_locations(cafile=str(settings["ca_file"]))
    return context


def _connect(settings: Mapping[str, Any]) -> smtplib.SMTP:
    host = str(settings["smtp_host"])
    use_ssl, starttls = bool(settings.get("ssl")), bool(settings.get("starttls"))
    port = int(settings.get("smtp_port") or (465 if use_ssl else 587 if starttls else 25))
    timeout = float(settings.get("timeout", 30))
    if use_ssl:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=_tls_context(settings))
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        smtp.ehlo()
        if starttls:
            smtp.starttls(context=_tls_context(settings))
            smtp.ehlo()
        if settings.get("username"):
            smtp.login(str(settings["username"]), str(settings.get("password") or ""))
    except BaseException:
        _close(smtp)
        raise
    return smtp


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except Exception:
        try:
            smtp.close()
        except Exception:
            pass


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def classify(exc: BaseException) -> tuple[str, bool]:
    """(error message, permanent) for an exception from smtplib or the socket."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items())
        return f"recipients refused: {detail}", bool(codes) and all(500 <= c < 600 for c in codes)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"SMTP login refused: {exc.smtp_code} {_text(exc.smtp_error)}", True
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"SMTP {exc.smtp_code} {_text(exc.smtp_error)}", 500 <= exc.smtp_code < 600
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return f"the SMTP server does not support this: {exc}", True
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return f"SMTP server disconnected: {exc}", False
    if isinstance(exc, ssl.SSLCertVerificationError):  # say which check: expired, wrong name, unknown CA
        return f"TLS certificate check failed: {exc.verify_message or exc.reason or exc}", False
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}", False
    if isinstance(exc, OSError):
        return f"cannot reach the SMTP server: {exc.strerror or exc}", False
    return f"{type(exc).__name__}: {exc}", False


def send(settings: Mapping[str, Any], notifications: list[Notification]) -> Iterator[Delivery]:
    """Send over one SMTP connection, yielding each message's Delivery as soon as the server has
    answered for it: the host records it before the next message goes, so a crash repeats at most
    the one message in flight."""
    register(settings.get("password"))
    where = f"{settings.get('smtp_host')}:{settings.get('smtp_port', '')}".rstrip(":")
    try:
        smtp = _connect(settings)
    except Exception as exc:
        error, permanent = classify(exc)
        for n in notifications:
            yield Delivery(n.id, ok=False, error=redact(f"{where}: {error}"), permanent=permanent)
        return
    # the envelope wants bare addresses; headers keep display names ("NOC <noc@example.com>")
    recipients = [parseaddr(a)[1] or a for a in (*settings["to"], *(settings.get("cc") or []))]
    sender = parseaddr(str(settings["from"]))[1] or str(settings["from"])
    try:
        for i, n in enumerate(notifications):
            try:
                msg = build_message(settings, n)
            except Exception as exc:  # a broken user template: report it, keep the message for a retry
                yield Delivery(n.id, ok=False, error=redact(f"template error: {type(exc).__name__}: {exc}"))
                continue
            try:
                smtp.send_message(msg, from_addr=sender, to_addrs=recipients)
            except Exception as exc:
                error, permanent = classify(exc)
                yield Delivery(n.id, ok=False, error=redact(f"{where}: {error}"), permanent=permanent)
                if isinstance(exc, smtplib.SMTPServerDisconnected) or not isinstance(exc, smtplib.SMTPException):
                    for m in notifications[i + 1:]:
                        yield Delivery(m.id, ok=False, error=redact(f"{where}: connection lost"))
                    return
                continue
            yield Delivery(n.id, ok=True)
    finally:
        _close(smtp)


@hookimpl
def mistwatch_notifiers():
    yield Notifier(type="email", send=send, settings_schema=SETTINGS_SCHEMA, check=check_templates,
                   description="Email through an SMTP relay (plain, STARTTLS or TLS; optional login).")

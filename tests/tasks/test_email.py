"""The email channel against a real SMTP server (aiosmtpd) that requires STARTTLS and login."""

from __future__ import annotations

import datetime as dt
import email
import socket
import ssl
from email import policy

import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from flows.compiler import compile_file
from infra.settings import ChannelConfig, ProjectConfig, load_config
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import customers, touches
from tasks.allocate import choose_tiers
from tasks.dispatch import dispatch_frame

PLAYBOOK = """
name: mails
model: none
segments:
  - name: rest
    else: true
    tiers:
      - {channel: email, template: e.html.j2}
"""
TEMPLATE = """{# subject: We miss you #}<p>Hello {{ first_name or 'friend' }}</p>
<a href="{{ unsubscribe_url }}">unsubscribe</a>"""


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


class Handler:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes, str | None, bool]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("gone@"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data.login.decode() if session.authenticated else None
        self.received.append((envelope.rcpt_tos, envelope.content, login, session.ssl is not None))
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=auth_data.login == b"ops" and auth_data.password == b"s3cret", auth_data=auth_data)


@pytest.fixture
def smtp_server(tmp_path):
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="localhost",
                            tls_context=context, require_starttls=True, authenticator=authenticator,
                            auth_required=True, auth_require_tls=True)
    controller.start()
    yield handler, port, cert
    controller.stop()


def test_email_goes_over_starttls_with_login_text_and_html_and_list_unsubscribe(tmp_path, sqlite_url, smtp_server):
    handler, port, cert = smtp_server
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    people = {"a": "a@example.com", "gone": "gone@example.com", "none": None}
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"customer_id": c, "signed_up_at": dt.datetime(2025, 1, 1), "timezone": "UTC",
                                           "email": e, "first_name": "Ann" if c == "a" else None}
                                          for c, e in people.items()])
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "e.html.j2").write_text(TEMPLATE)
    (tmp_path / "mails.yaml").write_text(PLAYBOOK)
    plan = compile_file(tmp_path / "mails.yaml", load_config())
    frame = pd.DataFrame({"segment": "rest", "monetary_365d": 0.0, "first_name": ["Ann", None, None],
                          "churn_score": None, "churn_reasons": None}, index=pd.Index(list(people), name="customer_id"))
    allocated = choose_tiers(frame, plan, {(c, "email", "marketing") for c in people})
    channel = ChannelConfig(type="email", host="localhost", port=port, username="ops", password="s3cret",
                            from_address="shop@example.com", tls_ca_file=str(cert), backoff_seconds=0.01)
    result = dispatch_frame(allocated, plan, dt.date(2026, 5, 1), engine=engine,
                            config=ProjectConfig(channels={"email": channel}), run_id="r", model_version=None,
                            dry_run=False)
    assert result.sent == {"email": 1}
    assert result.failed == {"smtp_550": 1, "no_address": 1}
    [(to, raw, login, tls)] = handler.received
    assert to == ["a@example.com"] and login == "ops" and tls
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["From"] == "shop@example.com"
    assert msg["List-Unsubscribe"].strip().startswith("<https://example.com/unsubscribe?t=")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    parts = {p.get_content_type(): p.get_content() for p in msg.iter_parts()}
    assert "<p>Hello Ann</p>" in parts["text/html"]
    assert "Hello Ann" in parts["text/plain"] and "<p>" not in parts["text/plain"]
    with engine.connect() as conn:
        status = dict(conn.execute(select(touches.c.customer_id, touches.c.reason)).all())
    assert status["gone"].startswith("smtp_550: 5.1.1 mailbox unavailable")


def test_an_address_that_would_break_the_headers_is_that_touch_alone_failing(tmp_path, sqlite_url, smtp_server):
    """smtplib raises ValueError on an address with CR/LF; it once left the whole batch planned and claimed,
    and the rerun sent the delivered ones again. Now it is that customer's dead letter."""
    handler, port, cert = smtp_server
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    people = {f"p{i}": f"p{i}@example.com" for i in range(6)}
    people["p3"] = "p3@example.com\r\nBcc: everyone@example.com"
    people["p4"] = "p4@example.com, p5@example.com"
    with engine.begin() as conn:
        conn.execute(customers.insert(), [{"customer_id": c, "signed_up_at": dt.datetime(2025, 1, 1), "timezone": "UTC",
                                           "email": e} for c, e in people.items()])
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "e.html.j2").write_text(TEMPLATE)
    (tmp_path / "mails.yaml").write_text(PLAYBOOK)
    plan = compile_file(tmp_path / "mails.yaml", load_config())
    frame = pd.DataFrame({"segment": "rest", "monetary_365d": 0.0, "first_name": None, "churn_score": None,
                          "churn_reasons": None}, index=pd.Index(list(people), name="customer_id"))
    allocated = choose_tiers(frame, plan, {(c, "email", "marketing") for c in people})
    channel = ChannelConfig(type="email", host="localhost", port=port, username="ops", password="s3cret",
                            from_address="shop@example.com", tls_ca_file=str(cert), backoff_seconds=0.01)
    config = ProjectConfig(channels={"email": channel})

    def run():
        return dispatch_frame(allocated, plan, dt.date(2026, 5, 1), engine=engine, config=config, run_id="r",
                              model_version=None, dry_run=False)

    result = run()
    assert result.sent == {"email": 4} and result.failed == {"bad_address": 2}
    assert sorted(to for to, *_ in handler.received) == [[f"p{i}@example.com"] for i in (0, 1, 2, 5)]
    with engine.connect() as conn:
        status = dict(conn.execute(select(touches.c.customer_id, touches.c.status)).all())
    assert status == {**{c: "sent" for c in people}, "p3": "failed", "p4": "failed"}
    assert run().sent == {} and len(handler.received) == 4  # the rerun sends nothing again

"""The `email` channel: SMTP with STARTTLS and login, text + HTML parts and a List-Unsubscribe header.

Addresses are read from the warehouse for each batch (they never travel through the pipeline or the
logs). A 4xx reply, a timeout or a dropped connection is retried with backoff (reconnecting); a 5xx
reply (unknown mailbox, rejected) is a dead letter with the server's message; a customer without an
address is a dead letter `no_address`, one whose address is not a single address (spaces, CR/LF, a
list) `bad_address`; any other exception is that message's dead letter with its class. A refused login
stops the channel (L604) without dead-lettering anyone. Message-ID is derived from the touch key, so a repeat after a
crash can be recognised downstream.
"""

from __future__ import annotations

import html
import re
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from infra.faults import crash_point
from infra.redact import mask_url
from infra.settings import ChannelConfig
from infra.warehouse.schema import customers
from tasks.channels.base import Delivery, Refused, Retryable, RetryPolicy, Unavailable, records, safe_text, unexpected

_TAG = re.compile(r"<[^>]+>")
_ADDRESS = re.compile(r"[^\s@<>,;\"]+@[^\s@<>,;\"]+\.[^\s@<>,;\"]+")  # one address: no spaces, CR/LF, lists


def build_message(row: dict[str, Any], sender: str, to: str | None) -> EmailMessage:
    """A multipart/alternative message: the text part, the HTML part, one-click unsubscribe headers.
    Refused when the customer has no usable address (none, or one that would break the headers)."""
    if not to:
        raise Refused("no_address: the customer has no email address")
    if not _ADDRESS.fullmatch(to):
        raise Refused("bad_address: the customer's email address is not one address (see the customers table)")
    body = str(row.get("body") or "")
    is_html = bool(row.get("html"))
    text = html.unescape(_TAG.sub("", body)) if is_html else body
    markup = body if is_html else "<p>" + html.escape(body).replace("\n", "<br>") + "</p>"
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, to
    msg["Subject"] = str(row.get("subject") or row.get("playbook") or "")
    msg["Message-ID"] = f"<{row['touch_key']}@lifecycle>"
    if row.get("unsubscribe_url"):
        msg["List-Unsubscribe"] = f"<{row['unsubscribe_url']}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    msg.add_alternative(markup, subtype="html")
    return msg


class EmailChannel:
    """One SMTP session per batch, reconnecting on transient failures."""

    def __init__(self, name: str, config: ChannelConfig, engine: Engine) -> None:
        self.name, self.config, self.engine = name, config, engine
        self.location = f"smtp {mask_url(str(config.host))}:{config.port}"
        self.policy = RetryPolicy(config.max_attempts, config.backoff_seconds, config.backoff_max_seconds)
        self.smtp: smtplib.SMTP | None = None

    def _addresses(self, ids: list[str]) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(customers.c.customer_id, customers.c.email).where(
                customers.c.customer_id.in_(ids), customers.c.email.is_not(None)))
            return {c: e for c, e in rows}

    def _connect(self) -> smtplib.SMTP:
        if self.smtp is None:
            c = self.config
            smtp = smtplib.SMTP(c.host or "", c.port, timeout=c.timeout_seconds)
            if c.starttls:
                smtp.starttls(context=ssl.create_default_context(cafile=c.tls_ca_file))
            if c.username:
                smtp.login(c.username, c.password or "")
            self.smtp = smtp
        return self.smtp

    def _close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self.smtp = None

    def _send_one(self, msg: EmailMessage) -> None:
        try:
            self._connect().send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            if 400 <= code < 500:
                raise Retryable(f"SMTP {code}") from None
            raise Refused(f"smtp_{code}: {reply.decode(errors='replace')[:100]}") from None
        except smtplib.SMTPSenderRefused as exc:
            self._close()
            if 400 <= exc.smtp_code < 500:
                raise Retryable(f"SMTP {exc.smtp_code}") from None
            raise Unavailable(f"the SMTP server refuses the sender {exc.sender!r} ({exc.smtp_code}): "
                              "check the channel's from_address") from None
        except smtplib.SMTPAuthenticationError as exc:
            self._close()
            raise Unavailable(f"the SMTP server refused the channel's login ({exc.smtp_code})") from None
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                self._close()
                raise Retryable(f"SMTP {exc.smtp_code}") from None
            raise Refused(f"smtp_{exc.smtp_code}: {exc.smtp_error.decode(errors='replace')[:100]}") from None
        except (smtplib.SMTPException, OSError) as exc:
            self._close()
            raise Retryable(f"SMTP connection failed ({exc.__class__.__name__})") from None

    def send_batch(self, messages: pd.DataFrame, out: Delivery) -> Delivery:
        """Send the batch one message at a time, each outcome recorded in `out` as it comes."""
        rows = records(messages)
        addresses = self._addresses([str(r["customer_id"]) for r in rows])

        def count_retry(_state: Any) -> None:
            out.retried += 1

        try:
            for row in rows:
                key = row["touch_key"]
                if out.error is not None:
                    out.undelivered.append(key)
                    continue
                try:
                    msg = build_message(row, self.config.from_address or "", addresses.get(str(row["customer_id"])))
                    retrying = Retrying(stop=stop_after_attempt(self.config.max_attempts), wait=self.policy.wait,
                                        retry=retry_if_exception_type(Retryable), reraise=True,
                                        before_sleep=count_retry)
                    retrying(self._send_one, msg)
                    out.sent.append(key)
                    crash_point("sending")
                except Refused as exc:
                    out.failed[key] = safe_text(str(exc), 128)
                except Unavailable as exc:
                    out.stop(str(exc), exc.code)
                    out.undelivered.append(key)
                except Retryable as exc:
                    out.stop(f"{exc} after {self.config.max_attempts} attempts")
                    out.undelivered.append(key)
                except Exception as exc:  # noqa: BLE001 - this message's failure, never the batch's
                    self._close()  # the session may be in any state now
                    out.failed[key] = unexpected(exc)
        finally:
            self._close()
        return out

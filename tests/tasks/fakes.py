"""Fake providers for the fault-injection tests: they check requests the way the real APIs do, record
what they accepted, and misbehave at the n-th message when told to.

`FakeHTTP` answers both the webhook (`POST /send`, touch key in Idempotency-Key) and WeCom
(`GET /cgi-bin/gettoken`, `POST /cgi-bin/externalcontact/add_msg_template`); `FakeSMTP` is an SMTP
server (aiosmtpd). A fault is `(kind, n)`: the n-th message request (1-based, retries counted) gets
`kind` once. `accepted` lists, per request the provider processed, the touch key (webhook), the external
contact (WeCom) or the recipient (SMTP): what reached a person, repeats included.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from aiosmtpd.controller import Controller

# What each fake can do at message n. "Accepted" kinds reach the person and then go wrong on the way back.
HTTP_FAULTS = ("status_500", "reset", "slow", "malformed", "huge", "redirect", "unauthorized", "retry_after_long")
WECOM_FAULTS = (*HTTP_FAULTS, "errcode_oops", "busy", "ip_refused")
SMTP_FAULTS = ("reject_451", "reject_554", "drop_after_data", "slow")
ACCEPTED = {"reset", "slow", "malformed", "huge", "errcode_oops", "drop_after_data"}


class FakeHTTP:
    """A webhook gateway and the WeCom API in one threaded HTTP server."""

    CORP, SECRET = "ww-corp", "s3cret"

    def __init__(self, slow_seconds: float = 0.6) -> None:
        self.lock = threading.Lock()
        self.slow_seconds = slow_seconds
        self.fault: tuple[str, int] | None = None
        self.requests = 0  # message requests seen (gettoken excluded)
        self.accepted: list[str] = []
        self.log: list[tuple[float, str]] = []  # (time.monotonic(), who) per accepted message
        self.bad: list[str] = []  # requests a real API would have refused as malformed
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def answer(self, code: int, body: bytes = b"{}", headers: dict | None = None) -> None:
                self.send_response(code)
                for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/cgi-bin/gettoken" or parse_qs(url.query) != {"corpid": [fake.CORP],
                                                                              "corpsecret": [fake.SECRET]}:
                    fake.bad.append(f"GET {self.path}")
                    return self.answer(400)
                self.answer(200, json.dumps({"errcode": 0, "errmsg": "ok", "access_token": "tok",
                                             "expires_in": 7200}).encode())

            def do_POST(self) -> None:
                url = urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                if url.path == "/send":
                    who = self.headers.get("Idempotency-Key")
                    ok = isinstance(body, dict) and who and body.get("touch_key") == who
                elif url.path == "/cgi-bin/externalcontact/add_msg_template":
                    ok = (isinstance(body, dict) and parse_qs(url.query) == {"access_token": ["tok"]}
                          and set(body) == {"chat_type", "external_userid", "sender", "text"}
                          and isinstance(body["external_userid"], list) and len(body["external_userid"]) == 1)
                    who = body["external_userid"][0] if ok else None
                else:
                    ok, who = False, None
                if not ok:
                    fake.bad.append(f"POST {self.path}")
                    return self.answer(400)
                with fake.lock:
                    fake.requests += 1
                    kind = fake.fault[0] if fake.fault and fake.fault[1] == fake.requests else None
                    if kind is None or kind in ACCEPTED:
                        fake.accepted.append(who)
                        fake.log.append((time.monotonic(), who))
                wecom = url.path != "/send"
                ok_body = json.dumps({"errcode": 0, "errmsg": "ok", "fail_list": [], "msgid": "m"}).encode()
                if kind is None:
                    return self.answer(200, ok_body if wecom else b'{"status": "queued"}')
                if kind == "status_500":
                    return self.answer(500, b'{"error": "internal"}')
                if kind == "reset":  # the request was processed; the connection dies before the answer
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if kind == "slow":
                    time.sleep(fake.slow_seconds)
                    return self.answer(200, ok_body)
                if kind == "malformed":
                    return self.answer(200, b"<html>gateway says hi</html>", {"Content-Type": "text/html"})
                if kind == "huge":
                    return self.answer(200, b"x" * (5 * 1024 * 1024), {"Content-Type": "text/plain"})
                if kind == "redirect":
                    return self.answer(301, b"", {"Location": "https://gateway.example.com/v2/send"})
                if kind == "unauthorized":
                    return self.answer(401, b'{"error": "bad token"}')
                if kind == "retry_after_long":
                    return self.answer(503, b'{"error": "maintenance"}', {"Retry-After": "86400"})
                if kind == "errcode_oops":
                    return self.answer(200, b'{"errcode": "oops", "errmsg": "?"}')
                if kind == "busy":
                    return self.answer(200, b'{"errcode": -1, "errmsg": "system busy"}')
                if kind == "ip_refused":
                    return self.answer(200, b'{"errcode": 60020, "errmsg": "not allow to access from your ip"}')
                raise AssertionError(kind)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that gave up (a timeout, an interrupt) is part of the test

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, fault: tuple[str, int] | None = None) -> None:
        with self.lock:
            self.fault, self.requests, self.accepted, self.log, self.bad = fault, 0, [], [], []

    def heal(self) -> None:
        with self.lock:
            self.fault = None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _SMTPHandler:
    def __init__(self, fake: FakeSMTP) -> None:
        self.fake = fake

    async def handle_DATA(self, server, session, envelope):
        fake = self.fake
        with fake.lock:
            fake.requests += 1
            kind = fake.fault[0] if fake.fault and fake.fault[1] == fake.requests else None
            if kind in ACCEPTED or kind in (None, "slow"):
                fake.accepted.extend(envelope.rcpt_tos)
                fake.log.extend((time.monotonic(), to) for to in envelope.rcpt_tos)
        if kind == "reject_451":
            return "451 4.3.0 try again later"
        if kind == "reject_554":
            return "554 5.7.1 message refused"
        if kind == "drop_after_data":  # taken for delivery; the connection dies before the reply
            server.transport.close()
            return "250 never seen"
        if kind == "slow":
            await asyncio.sleep(fake.slow_seconds)
        return "250 Message accepted"


class FakeSMTP:
    """A plain SMTP relay (no TLS, no login) that misbehaves at the n-th message."""

    def __init__(self, slow_seconds: float = 0.6) -> None:
        self.lock = threading.Lock()
        self.slow_seconds = slow_seconds
        self.fault: tuple[str, int] | None = None
        self.requests = 0
        self.accepted: list[str] = []
        self.log: list[tuple[float, str]] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(_SMTPHandler(self), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def reset(self, fault: tuple[str, int] | None = None) -> None:
        with self.lock:
            self.fault, self.requests, self.accepted, self.log = fault, 0, [], []

    def heal(self) -> None:
        with self.lock:
            self.fault = None

    def close(self) -> None:
        self.controller.stop()

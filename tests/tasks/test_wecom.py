"""The wecom channel against a local server that checks request shapes and answers like the enterprise WeChat API."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
from sqlalchemy import select

from flows.compiler import compile_file
from infra.errors import DispatchError
from infra.settings import ChannelConfig, ProjectConfig, load_config
from infra.warehouse.db import open_warehouse, upgrade
from infra.warehouse.schema import touches
from tasks.channels.base import Delivery
from tasks.allocate import choose_tiers
from tasks.dispatch import dispatch_frame

AS_OF = dt.date(2026, 5, 1)
PLAYBOOK = """
name: advisors
model: none
segments:
  - name: rest
    else: true
    tiers:
      - {channel: advisor, template: w.j2}
"""


class WecomAPI:
    """gettoken and add_msg_template. Per customer: `stale` gets 42001 once, `busy` errcode -1 once,
    `gone` errcode 84061 (no contact relation), `unreachable` comes back in fail_list; `down` answers -1 to every send.
    A malformed request is answered 400 and recorded in `bad`."""

    CORP, SECRET = "ww-corp", "s3cret"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token_fetches = 0
        self.sends: list[dict] = []  # token, body
        self.bad: list[str] = []
        self.down = False
        self.valid: set[str] = set()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, code: int, data: dict) -> None:
                text = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path != "/cgi-bin/gettoken" or query != {"corpid": [api.CORP], "corpsecret": [api.SECRET]}:
                    api.bad.append(f"GET {self.path}")
                    return self.reply(400, {})
                with api.lock:
                    api.token_fetches += 1
                    token = f"tok-{api.token_fetches}"
                    api.valid.add(token)
                self.reply(200, {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

            def do_POST(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                shape_ok = (url.path == "/cgi-bin/externalcontact/add_msg_template" and list(query) == ["access_token"]
                            and set(body) == {"chat_type", "external_userid", "sender", "text"}
                            and body["chat_type"] == "single" and isinstance(body["external_userid"], list)
                            and len(body["external_userid"]) == 1 and isinstance(body["sender"], str)
                            and set(body["text"]) == {"content"} and isinstance(body["text"]["content"], str))
                if not shape_ok:
                    api.bad.append(f"POST {self.path} {body}")
                    return self.reply(400, {})
                token = query["access_token"][0]
                with api.lock:
                    tries = sum(s["body"]["external_userid"] == body["external_userid"] for s in api.sends)
                    api.sends.append({"token": token, "body": body})
                self.reply(200, api.answer(token, body["external_userid"][0], tries))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, token: str, user: str, tries: int) -> dict:
        kind = user.split("-")[0]
        if token not in self.valid:
            return {"errcode": 40014, "errmsg": "invalid access_token"}
        if kind == "stale" and tries == 0:
            self.valid.discard(token)  # the token expired early on the server's side
            return {"errcode": 42001, "errmsg": "access_token expired"}
        if self.down or (kind == "busy" and tries == 0):
            return {"errcode": -1, "errmsg": "system busy"}
        if kind == "gone":
            return {"errcode": 84061, "errmsg": "not external contact, hint: [x]"}
        if kind == "unreachable":
            return {"errcode": 0, "errmsg": "ok", "fail_list": [user], "msgid": "m"}
        return {"errcode": 0, "errmsg": "ok", "fail_list": [], "msgid": f"msg-{user}"}

    def sent_to(self) -> list[str]:
        return [s["body"]["external_userid"][0] for s in self.sends]


@pytest.fixture
def api():
    a = WecomAPI()
    yield a
    a.server.shutdown()
    assert a.bad == [], "every request had the enterprise WeChat shape"


@pytest.fixture
def plan(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "w.j2").write_text("Hi {{ customer_id }}, your advisor {{ advisor_id }} here")
    (tmp_path / "advisors.yaml").write_text(PLAYBOOK)
    return compile_file(tmp_path / "advisors.yaml", load_config())


@pytest.fixture
def engine(sqlite_url):
    engine = open_warehouse(sqlite_url, create=True)
    upgrade(engine)
    return engine


def advisor_of(customer: str) -> str | None:
    return None if customer.startswith("lonely") else f"A{len(customer):03d}"


def run(plan, engine, ids, api, **options):
    frame = pd.DataFrame({"segment": "rest", "monetary_365d": 0.0, "first_name": None, "churn_score": None,
                          "churn_reasons": None, "advisor_id": [advisor_of(c) for c in ids]},
                         index=pd.Index(ids, name="customer_id"))
    allocated = choose_tiers(frame, plan, {(c, "wecom", "marketing") for c in ids})
    channel = ChannelConfig(type="wecom", consent="wecom", base_url=api.url, corp_id=api.CORP, secret=api.SECRET,
                            timeout_seconds=2, backoff_seconds=0.01, backoff_max_seconds=0.05, max_attempts=3,
                            **options)
    return dispatch_frame(allocated, plan, AS_OF, engine=engine, config=ProjectConfig(channels={"advisor": channel}),
                          run_id="r", model_version=None, dry_run=False)


def ledger(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        t = touches.c
        return {r[0]: (r[1], r[2]) for r in conn.execute(select(t.customer_id, t.status, t.reason))}


def test_one_token_for_many_sends_each_from_the_customers_advisor(plan, engine, api):
    ids = [f"ok-{i}" for i in range(10)]
    result = run(plan, engine, ids, api, concurrency=4)
    assert result.sent == {"advisor": 10} and result.retried == 0
    assert api.token_fetches == 1  # cached across concurrent sends
    assert sorted(api.sent_to()) == sorted(ids)
    for s in api.sends:
        user = s["body"]["external_userid"][0]
        assert s["token"] == "tok-1" and s["body"]["sender"] == advisor_of(user)
        assert s["body"]["text"]["content"] == f"Hi {user}, your advisor {advisor_of(user)} here"
    assert {status for status, _ in ledger(engine).values()} == {"sent"}


def test_expired_token_busy_errors_refusals_and_missing_advisors(plan, engine, api):
    ids = ["ok-1", "stale-1", "busy-1", "gone-1", "unreachable-1", "lonely-1"]
    result = run(plan, engine, ids, api, concurrency=1)
    assert result.sent == {"advisor": 3}
    assert result.retried == 1  # busy once; the expired token is refetched without a backoff retry
    assert api.token_fetches == 2  # the first, then one refetch after 42001
    assert api.sent_to().count("stale-1") == 2 and api.sent_to().count("busy-1") == 2
    assert "lonely-1" not in api.sent_to() and api.sent_to().count("gone-1") == 1
    rows = ledger(engine)
    assert rows["gone-1"] == ("failed", "wecom errcode 84061: not external contact, hint: [x]")
    assert rows["unreachable-1"][0] == "failed" and rows["unreachable-1"][1].startswith("wecom fail_list")
    assert rows["lonely-1"] == ("failed", "no_advisor: the customer has no assigned advisor")
    assert all(rows[c][0] == "sent" for c in ("ok-1", "stale-1", "busy-1"))
    assert result.failed == {"wecom errcode 84061": 1, "wecom fail_list": 1, "no_advisor": 1}


def test_an_external_userid_column_is_the_recipient(engine, api, plan):
    from tasks.channels.wecom import WecomChannel

    channel = WecomChannel("advisor", ChannelConfig(type="wecom", base_url=api.url, corp_id=api.CORP,
                                                    secret=api.SECRET))
    messages = pd.DataFrame({"touch_key": ["k1"], "customer_id": ["c1"], "external_userid": ["wmEXT1"],
                             "advisor_id": ["A001"], "body": ["hello"]})
    delivery = channel.send_batch(messages, Delivery())
    assert delivery.sent == ["k1"]
    assert api.sends[0]["body"] == {"chat_type": "single", "external_userid": ["wmEXT1"], "sender": "A001",
                                    "text": {"content": "hello"}}


def test_a_busy_api_stops_the_run_and_reruns_send_each_touch_once(plan, engine, api):
    ids = [f"ok-{i}" for i in range(6)]
    api.down = True
    with pytest.raises(DispatchError, match=r"channel advisor is failing: wecom errcode -1 after 3 attempts") as err:
        run(plan, engine, ids, api, concurrency=1)
    assert err.value.code == "L602"
    assert {s for s, _ in ledger(engine).values()} == {"planned"}
    api.down = False
    api.sends.clear()
    assert run(plan, engine, ids, api).sent == {"advisor": 6}
    assert sorted(api.sent_to()) == sorted(ids)
    again = run(plan, engine, ids, api)  # same playbook and day: the ledger says sent, nothing goes out
    assert again.sent == {} and again.already_sent == 6
    assert sorted(api.sent_to()) == sorted(ids)

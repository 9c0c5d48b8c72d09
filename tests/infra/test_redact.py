"""infra/redact.py: what leaves the process has no credential, no control character, no live formula."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.redact import csv_safe, mask_secrets_in, mask_url, strip_controls


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:pw@hooks.example.com/send?x=1", "http://user:***@hooks.example.com/send?x=1"),
    ("https://TOKEN123@hooks.example.com/send", "https://***@hooks.example.com/send"),
    ("https://hooks.example.com/send?token=abc&team=crm", "https://hooks.example.com/send?token=***&team=crm"),
    ("https://h.example/x?access_token=a;key=b&api-key=c&monkey=d", "https://h.example/x?access_token=***;key=***&api-key=***&monkey=d"),
    ("https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=s", "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=***"),
    ("https://app.example/cb#access_token=zz&state=1", "https://app.example/cb#access_token=***&state=1"),
    ("postgresql://lifecycle:s3cret@db:5432/lifecycle", "postgresql://lifecycle:***@db:5432/lifecycle"),
    ("postgresql+psycopg://lifecycle@db/lc?sslpassword=p", "postgresql+psycopg://lifecycle@db/lc?sslpassword=***"),
    ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://postgres@127.0.0.1:5432/test"),
    ("sqlite:////home/ops/.lifecycle/warehouse.db", "sqlite:////home/ops/.lifecycle/warehouse.db"),
    ("http://127.0.0.1:4200/api", "http://127.0.0.1:4200/api"),
    ("not a url at all", "not a url at all"),
    ("http://[::1/broken", "http://[::1/broken"),
    ("http://u:p@[::1/broken", "http://u:***@[::1/broken"),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_mask_url_strips_control_characters():
    assert mask_url("http://h/x\r\nX-Injected: 1") == "http://h/x X-Injected: 1"


def test_mask_secrets_in_free_text():
    text = ("POST http://bot:hunter2@hooks.example.com/x failed; Authorization: Bearer abcdefgh12345; "
            "password=hunter2 token: 'zz9' the access token expired; Basic authentication; Basic dXNlcjpwdw==")
    masked = mask_secrets_in(text)
    assert "hunter2" not in masked and "abcdefgh12345" not in masked and "zz9" not in masked
    assert "dXNlcjpwdw" not in masked
    assert "the access token expired; Basic authentication" in masked  # prose is left alone
    assert "http://bot:***@hooks.example.com/x" in masked


def test_strip_controls():
    assert strip_controls("a\x1b[2Jb\x07c\x00d\x9be") == "a[2Jbcde"
    assert strip_controls("line one\r\nline two\tx") == "line one\nline two\tx"
    assert strip_controls("one\r\ntwo\tthree", keep="") == "one two three"
    assert strip_controls("abc\u202edcba") == "abcdcba"  # a bidi override cannot reorder the terminal
    assert strip_controls("陈 Łukasz café") == "陈 Łukasz café"


@given(st.text())
def test_strip_controls_leaves_no_control_character(text):
    out = strip_controls(text, keep="")
    assert not any(0 <= ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in out)


@given(st.text())
def test_mask_functions_never_raise(text):
    mask_url(text)
    mask_secrets_in(text)
    mask_url("http://" + text)


@pytest.mark.parametrize(("value", "safe"), [
    ("=HYPERLINK(\"http://evil\",\"click\")", "'=HYPERLINK(\"http://evil\",\"click\")"),
    ("+1-555", "'+1-555"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("C0001", "C0001"), ("", ""), (3, 3), (-1.5, -1.5), (None, None),
])
def test_csv_safe(value, safe):
    assert csv_safe(value) == safe


def test_mask_id_and_mask_person():
    from infra.redact import mask_id, mask_person

    assert mask_id("C00012342") == "C00****42" and mask_id("abc") == "****"
    assert mask_person("Hi Meiling, C00012342", "C00012342", "Meiling") == "Hi M***, C00****42"
    assert mask_person("Hi 王芳您好", "C1", "王芳") == "Hi 王***您好"  # no word boundaries needed
    assert mask_person(None, "C1", "Ann") is None and mask_person("Hi A", "C1", "A") == "Hi A"

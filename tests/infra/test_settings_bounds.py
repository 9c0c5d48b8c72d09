"""lifecycle.yaml's numbers, names and URLs are bounded: a typo cannot hang a run, flood a provider or
write outside the outbox folder, and every such mistake is located with a hint."""

from __future__ import annotations

import pytest

from infra.errors import ConfigError
from infra.settings import ChannelConfig, ProjectConfig, load_config


def _problems(tmp_path, text: str) -> str:
    path = tmp_path / "lifecycle.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    return err.value.render()


WEBHOOK = "channels:\n  sms:\n    type: webhook\n    url: https://hooks.example.com/x\n"


@pytest.mark.parametrize(("line", "expected", "hint"), [
    ("timeout_seconds: .inf", "expected a finite number (not .inf or .nan), got inf", "at most 600"),
    ("timeout_seconds: 1e9", "must be at most 600.0, got '1e9'", "seconds to wait for one provider reply"),
    ("timeout_seconds: 0", "must be more than 0.0, got 0", "more than 0"),
    ("backoff_seconds: .nan", "expected a finite number (not .inf or .nan), got nan", "the first retry's wait"),
    ("backoff_max_seconds: 86400", "must be at most 600.0, got 86400", "the longest wait between retries"),
    ("max_attempts: 1000", "must be at most 20, got 1000", "1 to 20"),
    ("max_attempts: 0", "must be at least 1, got 0", "1 to 20"),
    ("concurrency: 100000", "must be at most 256, got 100000", "1 to 256"),
    ("rate_per_second: -.inf", "expected a finite number (not .inf or .nan), got -inf", "calls per second"),
    ("rate_per_second: 1e400", "expected a finite number (not .inf or .nan), got '1e400'", "calls per second"),
    ("rate_per_second: 1.0e+400", "expected a finite number (not .inf or .nan), got inf", "calls per second"),
    ("cost_per_message: .inf", "expected a finite number (not .inf or .nan), got inf", "a finite number, 0 or more"),
    ("cost_per_message: -0.5", "must be at least 0.0, got -0.5", "0 or more"),
])
def test_provider_numbers_are_finite_and_bounded(tmp_path, line, expected, hint):
    text = _problems(tmp_path, WEBHOOK + f"    {line}\n")
    assert f"lifecycle.yaml:5:5: error[L204] {expected} (at channels.sms.{line.split(':')[0]})" in text
    assert "\n  hint: " in text and hint in text


def test_the_port_and_the_control_group_are_bounded_too(tmp_path):
    text = _problems(tmp_path, "channels:\n  mail:\n    type: email\n    host: smtp.x\n    from_address: a@x\n"
                               "    port: 70000\ncontrol_group: {percent: .nan, salt: x}\n")
    assert "lifecycle.yaml:6:5: error[L204] must be at most 65535, got 70000 (at channels.mail.port)" in text
    assert "error[L204] expected a finite number (not .inf or .nan), got nan (at control_group.percent)" in text


def test_numbers_within_the_bounds_load(tmp_path):
    path = tmp_path / "lifecycle.yaml"
    path.write_text(WEBHOOK + "    timeout_seconds: 600\n    max_attempts: 20\n    concurrency: 256\n"
                              "    backoff_max_seconds: 600\n    rate_per_second: 0.5\n    cost_per_message: 0\n")
    sms = load_config(str(path)).channel("sms")
    assert (sms.timeout_seconds, sms.max_attempts, sms.concurrency, sms.rate_per_second) == (600, 20, 256, 0.5)


@pytest.mark.parametrize("name", ["../../x", "SMS", "sms push", "1sms", "a/b", "x" * 65, "sms\u202e"])
def test_channel_names_are_identifiers(tmp_path, name):
    text = _problems(tmp_path, f"channels:\n  {name!r}:\n    type: outbox\n  push:\n    type: outbox\n")
    assert "lifecycle.yaml:2:3: error[L215] '" in text and "is not a valid channel name" in text
    assert "hint: use lower-case letters, digits and underscores" in text
    assert "\u202e" not in text  # the name is shown without what would reorder the terminal


def test_a_channel_named_like_a_path_cannot_be_built_in_code_either():
    with pytest.raises(ValueError, match="not valid channel names: '../../x'"):
        ProjectConfig(channels={"../../x": ChannelConfig(type="outbox")})


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://hooks.example.com/x", "the scheme is 'ftp'"),
    ("hooks.example.com/x", "there is no scheme"),
    ("file:///etc/passwd", "the scheme is 'file'"),
    ("https:///x", "there is no host"),
    ("https://hooks.example.com:99999/x", "it cannot be read"),
    ("'https://hooks.example.com/a b'", "it contains spaces or control characters"),
])
def test_channel_urls_must_be_http_with_a_host(tmp_path, url, why):
    text = _problems(tmp_path, f"channels:\n  sms:\n    type: webhook\n    url: {url}\n")
    assert f"lifecycle.yaml:4:5: error[L216] `url` must be an http:// or https:// URL with a host: {why}" in text
    assert "hint: write e.g. https://" in text


def test_a_wecom_base_url_too_and_credentials_in_it_are_not_repeated(tmp_path, monkeypatch):
    monkeypatch.setenv("WECOM_URL", "gopher://corp:hunter2@qyapi.example.com")
    text = _problems(tmp_path, "channels:\n  advisor:\n    type: wecom\n    corp_id: ww\n    secret: s\n"
                               "    base_url: ${WECOM_URL}\n")
    assert "lifecycle.yaml:6:5: error[L216] `base_url` must be an http:// or https:// URL" in text
    assert "got 'gopher://corp:***@qyapi.example.com'" in text and "hunter2" not in text


def test_every_problem_is_reported_at_once_top_to_bottom(tmp_path):
    text = _problems(tmp_path, "channels:\n  ../x:\n    type: outbox\n  sms:\n    type: webhook\n"
                               "    url: ftp://h/x\n    max_attempts: 99\n")
    codes = [line.split("error[")[1][:4] for line in text.splitlines() if "error[" in line]
    assert codes == ["L215", "L216", "L204"]
    assert text.rstrip().endswith("3 problem(s) in " + str(tmp_path / "lifecycle.yaml"))


def test_headers_that_http_cannot_carry_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN", "abc\r\nX-Injected: 1")
    text = _problems(tmp_path, WEBHOOK + "    headers: {Authorization: 'Bearer ${TOKEN}', 'Bad Name': x}\n")
    assert "lifecycle.yaml:5:15: error[L217] header 'Authorization' cannot be sent" in text
    assert "error[L217] header 'Bad Name' cannot be sent" in text
    assert "X-Injected" not in text


def test_a_password_written_in_the_file_is_masked_in_the_excerpt(tmp_path):
    text = _problems(tmp_path, "channels:\n  sms:\n    type: webhook\n    url: ftp://bot:hunter2@h.example/x\n")
    assert "hunter2" not in text
    assert "   4 |     url: ftp://bot:*******@h.example/x" in text  # same width: the caret stays under the value

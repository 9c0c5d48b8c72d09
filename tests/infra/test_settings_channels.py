"""Channel config: typed keys per channel type, secrets from the environment, mistakes located."""

from __future__ import annotations

import pytest

from infra.errors import ConfigError
from infra.settings import load_config


def test_webhook_and_email_channels_load_with_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN", "t0k")
    path = tmp_path / "lifecycle.yaml"
    path.write_text("channels:\n  sms:\n    type: webhook\n    url: http://x/send\n"
                    "    headers: {Authorization: 'Bearer ${TOKEN}'}\n    rate_per_second: 5\n"
                    "  email:\n    type: email\n    host: smtp.x\n    from_address: a@x\n")
    config = load_config(str(path))
    assert config.channel("sms").headers == {"Authorization": "Bearer t0k"}
    assert config.channel("email").port == 587 and config.channel("email").starttls


def test_keys_of_another_type_and_missing_keys_are_located_errors(tmp_path):
    path = tmp_path / "lifecycle.yaml"
    path.write_text("channels:\n  sms:\n    type: webhook\n    host: smtp.x\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = err.value.render()
    assert f"{path}:4:5: error[L204] `host` does not apply to a webhook channel" in text
    assert "error[L204] a webhook channel needs `url` (at channels.sms)" in text
    path.write_text("channels:\n  sms:\n    type: webhook\n    url: http://x\n    retries: 3\n")
    with pytest.raises(ConfigError, match="problem"):
        load_config(str(path))


def test_a_wecom_channel_loads_and_rejects_webhook_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WECOM_SECRET", "s3")
    path = tmp_path / "lifecycle.yaml"
    path.write_text("channels:\n  advisor:\n    type: wecom\n    consent: wecom\n    corp_id: ww1\n"
                    "    secret: ${WECOM_SECRET}\n    rate_per_second: 10\n    concurrency: 4\n")
    advisor = load_config(str(path)).channel("advisor")
    assert (advisor.corp_id, advisor.secret, advisor.base_url) == ("ww1", "s3", "https://qyapi.weixin.qq.com")
    assert advisor.rate_per_second == 10 and advisor.concurrency == 4
    path.write_text("channels:\n  advisor:\n    type: wecom\n    corp_id: ww1\n    url: http://x\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = err.value.render()
    assert f"{path}:5:5: error[L204] `url` does not apply to a wecom channel" in text
    assert "error[L204] a wecom channel needs `secret` (at channels.advisor)" in text

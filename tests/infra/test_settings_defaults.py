"""lifecycle.yaml `defaults:`: the timezone of customers imported without one; a wrong name is located."""

from __future__ import annotations

import pytest

from infra.errors import ConfigError
from infra.settings import load_config


def _load(tmp_path, text: str):
    path = tmp_path / "lifecycle.yaml"
    path.write_text(text)
    return load_config(str(path))


def test_without_defaults_customers_without_a_timezone_are_utc(tmp_path):
    assert _load(tmp_path, "channels:\n  sms:\n    type: outbox\n").defaults.timezone is None


def test_a_default_timezone_is_read(tmp_path):
    assert _load(tmp_path, "defaults: {timezone: Asia/Shanghai}\n").defaults.timezone == "Asia/Shanghai"


@pytest.mark.parametrize(("text", "expected"), [
    ("defaults:\n  timezone: Asia/Shanghia\n",
     "lifecycle.yaml:2:13: error[L204] 'Asia/Shanghia' is not a timezone zoneinfo knows (at defaults.timezone)\n"
     "   2 |   timezone: Asia/Shanghia\n"
     "                   ^\n"
     "  hint: did you mean 'Asia/Shanghai'? An IANA timezone name"),
    ("defaults:\n  timezone: America\n", "'America' is not a timezone zoneinfo knows"),  # a folder of zones
    ("defaults:\n  timezone: ../../etc/passwd\n", "'../../etc/passwd' is not a timezone zoneinfo knows"),
    ("defaults:\n  timzone: UTC\n", "unknown key 'timzone' (at defaults.timzone)"),
    ("defaults:\n  timezone: 8\n", "(at defaults.timezone)"),
])
def test_a_wrong_default_is_located_with_a_hint(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert err.value.exit_code == 2 and expected in err.value.render()

"""lifecycle.yaml `defaults: {currency}`: the project's money, for figures of playbooks without offers."""

from __future__ import annotations

import pytest

from infra.errors import ConfigError
from infra.settings import load_config


def _load(tmp_path, text: str):
    path = tmp_path / "lifecycle.yaml"
    path.write_text(text)
    return load_config(str(path))


def test_the_project_currency_is_cny_unless_lifecycle_yaml_names_another(tmp_path):
    assert _load(tmp_path, "channels:\n  sms:\n    type: outbox\n").defaults.currency == "CNY"
    assert _load(tmp_path, "defaults:\n  currency: EUR\n").defaults.currency == "EUR"


@pytest.mark.parametrize(("text", "expected"), [
    ("defaults:\n  currency: EURO\n", "lifecycle.yaml:2:3: error[L204]"),
    ("defaults:\n  currency: EURO\n", "a three-letter currency code, e.g. CNY (the default), EUR or USD"),
    ("defaults:\n  curency: EUR\n", "did you mean 'currency'?"),
])
def test_a_currency_that_is_not_one_points_at_the_line(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    assert expected in err.value.render()

"""The global control group (lifecycle.yaml `control_group`): the same customers sit out every marketing
playbook, recorded as held out with reason `global_control`; service messages are not held back."""

from __future__ import annotations

import pytest

from flows.compiler import compile_file
from infra.errors import ConfigError
from infra.settings import ChannelConfig, ControlGroup, ProjectConfig, load_config
from tasks.allocate import choose_tiers
from tasks.guardrails import in_control_group
from tests.tasks.test_guardrails import customers, everyone_consents, make_plan

CONTROL = ControlGroup(percent=5, salt="2026")


def test_the_same_customers_are_held_out_of_every_marketing_playbook(tmp_path):
    one = make_plan(tmp_path, holdout=10)
    other = one.model_copy(update={"name": "other", "experiment": None})
    frame = customers(4000)
    ids = list(frame.index)
    mask = in_control_group(ids, one, CONTROL)
    assert 0.04 < mask.mean() < 0.06
    assert (mask == in_control_group(ids, other, CONTROL)).all()  # the playbook is not in the hash
    assert (mask == in_control_group(list(reversed(ids)), one, CONTROL)[::-1]).all()

    out = choose_tiers(frame, one, everyone_consents(frame), control=CONTROL)
    in_control = out["reason"].eq("global_control").fillna(False).to_numpy(dtype=bool)
    assert (in_control == mask).all() and (out.loc[in_control, "tier"] == -1).all()
    # the playbook's own holdout is drawn among the rest, and nobody is in both
    assert 0.08 < out["reason"].eq("holdout").fillna(False).mean() / (1 - mask.mean()) < 0.12
    assert choose_tiers(frame, other, everyone_consents(frame), control=CONTROL)["reason"].eq(
        "global_control").fillna(False).sum() == mask.sum()
    # no control group configured: nobody is held out for it
    assert not choose_tiers(frame, one, everyone_consents(frame))["reason"].eq("global_control").fillna(False).any()


def test_a_playbook_of_service_messages_is_not_held_back(tmp_path):
    config = ProjectConfig(channels={
        "advisor": ChannelConfig(type="outbox", consent="wecom", purpose="service"),
        "sms": ChannelConfig(type="outbox", purpose="service"), "push": ChannelConfig(type="outbox", purpose="service")})
    make_plan(tmp_path)
    service = compile_file(tmp_path / "guarded.yaml", config)
    frame = customers(1000)
    assert not in_control_group(list(frame.index), service, CONTROL).any()


def test_control_group_config_is_typed_and_located(tmp_path):
    path = tmp_path / "lifecycle.yaml"
    path.write_text("channels:\n  sms: {type: outbox, cost_per_message: 0.05}\ncontrol_group:\n  percent: 5\n"
                    "  salt: '2026'\n")
    config = load_config(str(path))
    assert config.control_group == CONTROL and config.channel("sms").cost_per_message == 0.05
    path.write_text("channels:\n  sms: {type: outbox}\ncontrol_group:\n  percent: 80\n  slat: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    text = err.value.render()
    assert f"{path}:4:3: error[L204] must be at most 50" in text
    assert "unknown key 'slat'" in text and "did you mean 'salt'?" in text
    assert "missing required key 'salt'" in text

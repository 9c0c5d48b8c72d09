"""The run summary as a person reads it: a dry run says what it would do, never that it sent; money has its
currency; a cut preview ends with an ellipsis; counts read '1 customer'; a model that saw later data is said."""

from __future__ import annotations

import ast
import re

from flows.summary import PREVIEW_CHARS, format_summary, outcome_lines, preview_lines


def _summary(**extra) -> dict:
    base = {"playbook": "churn_winback", "version": 1, "as_of": "2026-11-09", "dry_run": False, "customers": 47050,
            "audience": 23279, "unmatched": 10723, "plan_hash": "772ad38f4f060604", "model_version": "churn-x",
            "segments": {"high_value": 17}, "segment_channel": {"high_value": {"sms": 5}}, "touches": {"sms": 5},
            "dropped": {"holdout": 12, "no_consent": 44}, "deferred": 6, "offer_cost": 474.0, "currency": "CNY",
            "outboxes": {}, "follow_ups": {"converted": 0, "steps": {"reminder": {
                "due": 3, "selected": 2, "sent": {"push": 2}, "dropped": {}, "deferred": 1, "exited": 0}}}}
    return {**base, **extra}


def test_a_dry_run_says_would_send_and_would_defer_never_sent():
    text = format_summary(_summary(dry_run=True))
    lines = text.splitlines()
    assert lines[0].endswith("(dry run: nothing written or sent)")
    assert "  would send: sms 5" in lines and "  would not touch: holdout 12, no_consent 44" in lines
    assert "  would defer until quiet hours end: 6" in lines
    assert "  offers it would commit: 474.00 CNY (coupon unit cost of the touches it would send)" in lines
    assert ("  follow-up reminder: 3 due, 2 selected by its rule, would send push 2; would not touch none; "
            "would defer 1") in lines
    assert not [line for line in lines[1:] if re.search(r"\b(sent|deferred|committed)\b", line)], text


def test_a_real_run_says_what_it_did_with_the_currency_on_the_offers():
    lines = outcome_lines(_summary())
    assert lines[0] == "touches sent: sms 5" and "not touched: holdout 12, no_consent 44" in lines
    assert "deferred until quiet hours end: 6 (sent by the next run or `lifecycle deliver`)" in lines
    assert "offers committed: 474.00 CNY (coupon unit cost of the touches planned)" in lines
    assert "follow-up reminder: 3 due, 2 selected by its rule, sent push 2; not touched none; deferred 1" in lines


def test_a_model_trained_after_the_runs_day_is_the_first_thing_said():
    lines = outcome_lines(_summary(model_warning="model churn-x learned from data up to 2026-11-08, after ..."))
    assert lines[0] == "warning: model churn-x learned from data up to 2026-11-08, after ..."


def test_previews_cut_at_their_length_end_with_an_ellipsis():
    long = "Hi Meiling, " + "this is your style advisor with an exclusive coupon. " * 4
    short = "Hi Meiling, come back"
    cut, whole = preview_lines([
        {"segment": "vip", "tier": 0, "customer_id": "C00012342", "first_name": "Meiling", "subject": None, "body": b}
        for b in (long, short)])
    shown = cut.split(": ", 1)[1]
    assert shown.endswith("…'") and len(ast.literal_eval(shown)) == PREVIEW_CHARS
    assert whole.endswith("'Hi M***, come back'")


def test_counts_of_one_read_in_the_singular():
    text = format_summary(_summary(customers=1, audience=1, unmatched=0, triggered_by=1, window=["a", "b"]))
    assert "  1 customer, 1 in the audience, 0 in no segment" in text
    assert "triggered: 1 customer with the event in a .. b" in text

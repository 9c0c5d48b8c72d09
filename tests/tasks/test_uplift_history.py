"""Uplift from a playbook's randomised history in a simulated world where the persuadables are NOT the
highest-risk customers: uplift targeting finds more incremental conversions than risk targeting at the same
budget, the model registers, and a playbook can gate on `uplift_score`."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from flows.compiler import compile_file
from infra import demoresponse
from infra.errors import ModelError
from infra.settings import load_config
from tests.conftest import END, make_world
from tests.flows.test_cli import assert_clean_failure, cli

pytestmark = pytest.mark.slow

AS_OF = END - dt.timedelta(days=30)
PROBE = """name: uplift_probe
description: The same SMS for every risk band; who it moves is the question.
model: churn
audience: "orders_total >= 1 and recency_days <= 365"
segments:
{segments}
experiment: {{holdout_percent: 50}}
goal: {{event: order.placed, window_days: 21}}
"""
BANDS = """  - name: at_risk
    when: "churn_score >= 0.7"
    tiers: [{channel: sms, template: probe.txt.j2}]
  - name: drifting
    when: "churn_score >= 0.3"
    tiers: [{channel: sms, template: probe.txt.j2}]
  - name: steady
    else: true
    tiers: [{channel: sms, template: probe.txt.j2}]"""
GATE = """  - name: moved_by_it
    when: "uplift_score >= 0.1"
    tiers: [{channel: sms, template: probe.txt.j2}]"""
# The SMS persuades half of the middle band, a fifth as many of the steady, and none of the highest risk.
EFFECTS = demoresponse.Effects(persuade={"sms": 0.5}, segment_scale={"at_risk": 0.0, "drifting": 1.0, "steady": 0.2})


def _playbook(folder, segments: str):
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "probe.txt.j2").write_text("Something new in the shop for you.")
    path = folder / "uplift_probe.yaml"
    path.write_text(PROBE.format(segments=segments))
    return path


def _run(engine, plan, model, as_of):
    """The flow's steps as plain functions: features, score, segments, allocation, the ledger."""
    from tasks.allocate import allocate_frame
    from tasks.dispatch import dispatch_frame
    from tasks.extract import extract_all
    from tasks.features import build_features
    from tasks.score import score_frame
    from tasks.segment import assign_segments

    selected, _ = assign_segments(score_frame(build_features(extract_all(engine, as_of)), model), plan, as_of)
    allocated = allocate_frame(selected, plan, as_of, engine)
    dispatch_frame(allocated, plan, as_of, engine=engine, config=load_config(), run_id="test",
                   model_version=model.version, dry_run=False)
    return selected


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    from flows.training import train
    from tasks import measure

    folder = tmp_path_factory.mktemp("uplift")
    url = f"sqlite:///{folder / 'warehouse.db'}"
    engine = make_world(url, customers=5000, seed=5)
    model = train(engine, AS_OF, 90)
    plan = compile_file(_playbook(folder / "bands", BANDS), load_config())
    selected = _run(engine, plan, model, AS_OF)
    response = demoresponse.respond(engine, measure.assignments(engine, plan, AS_OF, AS_OF), seed=1, effects=EFFECTS)
    return url, engine, plan, selected, response, folder


def test_uplift_targeting_beats_risk_targeting_where_persuadables_are_not_the_riskiest(history):
    from tasks.uplift import train_and_evaluate

    url, engine, plan, selected, response, _ = history
    # the world is as designed: the riskiest band is not moved at all, the middle band is
    truth = response.true_lift(plan.name, by="segment")
    assert truth.loc["at_risk", "rate_diff"] == 0 and truth.loc["drifting", "rate_diff"] > 0.15
    risk = selected.groupby("segment")["churn_score"].mean()
    assert risk["at_risk"] > risk["drifting"] > risk["steady"]

    model, ev, h = train_and_evaluate(engine, plan)
    assert set(h["arm"]) == {"treated", "control"} and ev.customers == len(h) - model.meta["train"]["treated"] \
        - model.meta["train"]["control"]
    for share in (0.1, 0.2, 0.3):
        r = ev.at(share)
        assert r["uplift"] > r["risk"] + 0.05 * r["n"], (share, ev.curves)
    assert ev.area("uplift") > ev.area("risk")
    # on the customers it never saw, it ranks the persuadable band first
    from tasks.guardrails import buckets
    from tasks.uplift import EVAL_PERCENT

    test = h[buckets(list(h.index), "uplift-eval", plan.name) < EVAL_PERCENT]
    assert len(test) == ev.customers
    scores = model.predict(test).groupby(selected["segment"].reindex(test.index)).mean()
    assert scores["drifting"] > scores["steady"] and scores["drifting"] > scores["at_risk"]


def test_cli_registers_the_model_and_a_playbook_gates_on_it(history, tmp_path):
    from tasks import uplift as tasks_uplift
    from tasks.extract import extract_all
    from tasks.features import build_features
    from tasks.score import score_frame
    from tasks.segment import assign_segments
    from models import registry

    url, engine, plan, _, _, folder = history
    r = cli("uplift", str(folder / "bands" / "uplift_probe.yaml"), "--db", url, "--out", str(tmp_path), "--format", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # nothing but the JSON on stdout: how far along it is goes to stderr
    stages = r.stderr.splitlines()
    assert stages[0].startswith("uplift: history: ") and any(s.startswith("uplift: judging on ") for s in stages)
    assert report["registered"] and report["evaluation"]["area"]["uplift"] > report["evaluation"]["area"]["risk"]
    assert (tmp_path / "uplift.png").stat().st_size > 5000 and "data:image/png" in (tmp_path / "uplift.html").read_text()
    stored = tasks_uplift.latest(engine, "uplift_probe")
    assert stored is not None and stored.version == report["model_version"]
    # the playbook's report shows the verdict next to the measured lift
    probe = str(folder / "bands" / "uplift_probe.yaml")
    r = cli("report", probe, "--db", url, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["uplift_targeting"]["area"] == report["evaluation"]["area"]
    # the verdict, with its interval (or why there is none), says the same in every output
    verdict = report["evaluation"]["verdict"]
    assert verdict["share"] == 0.2 and {"value", "low", "high"} <= set(verdict["difference"])
    assert verdict["winner"] in ("uplift", "risk", None) and verdict["text"].startswith("verdict at a budget of 20%")
    assert json.loads(r.stdout)["uplift_targeting"]["verdict"] == verdict
    page = (tmp_path / "uplift.html").read_text()
    assert "Which ranking finds more, with 95% intervals" in page and verdict["text"].split(" (")[0] in page
    table = cli("report", probe, "--db", url)
    assert table.returncode == 0 and verdict["text"].split(":")[1].strip()[:30] in table.stdout
    assert any(line.strip().startswith("verdict at a budget of 20% of customers:") for line in table.stdout.splitlines())
    r = cli("report", probe, "--db", url, "--format", "html", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0 and "Uplift vs risk targeting" in (tmp_path / "rep" / "report.html").read_text()
    assert "verdict at a budget of 20% of customers:" in (tmp_path / "rep" / "report.html").read_text()
    assert (tmp_path / "rep" / "uplift_vs_risk.png").exists()

    gate = compile_file(_playbook(folder / "gate", GATE), load_config())
    assert "uplift_score" in gate.features
    churn = registry.latest(engine)
    scored = score_frame(build_features(extract_all(engine, END)), churn)
    scored = tasks_uplift.add_uplift(scored, tasks_uplift.for_plan(engine, gate))
    chosen, counts = assign_segments(scored, gate, END)
    assert 0 < len(chosen) < counts["audience"]
    assert (chosen["uplift_score"] >= 0.1).all()
    # `lifecycle plan` (and so a run) scores uplift the same way before the rules see it
    r = cli("plan", str(folder / "gate" / f"{gate.name}.yaml"), "--db", url, "--as-of", END.isoformat(),
            "--format", "json")
    assert r.returncode == 0, r.stderr
    assert sum(json.loads(r.stdout)["segments"].values()) == len(chosen)


def test_no_history_is_a_clear_error(history, tmp_path):
    from tasks.uplift import for_plan, train_and_evaluate

    url, engine, _, _, _, _ = history
    other = compile_file(_playbook(tmp_path / "fresh", GATE), load_config())
    with pytest.raises(ModelError) as err:
        train_and_evaluate(engine, other.model_copy(update={"name": "never_ran"}))
    assert err.value.code == "L509" and "holdout" in err.value.hint
    with pytest.raises(ModelError) as err:
        for_plan(engine, other.model_copy(update={"name": "never_ran"}))
    assert "lifecycle uplift never_ran" in err.value.hint
    assert_clean_failure(cli("uplift", "dormant_wakeup", "--db", url), 1, "error[L509]", "no randomised history")

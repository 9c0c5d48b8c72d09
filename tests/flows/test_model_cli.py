"""`lifecycle model train|score|backtest` and `data import` from the command line, with CSV files alone."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from flows.cli import main
from tasks.source import FrameSource
from tests.conftest import END, make_world


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    engine = make_world(f"sqlite:///{folder / 'w.db'}", customers=3000, seed=8)
    frames = FrameSource.from_warehouse(engine)
    frames.orders.to_csv(folder / "orders.csv", index=False)
    frames.events.to_csv(folder / "events.csv", index=False)
    return folder


def test_train_and_score_from_csv_with_no_warehouse(csvs, tmp_path, capsys):
    orders = str(csvs / "orders.csv")
    assert main(["model", "train", "--orders", orders, "--as-of", END.isoformat(), "--out", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "without events" in out and "written to" in out and out.startswith("model: trained")
    # how far along it is, on stderr only: each stage with its counts and the seconds since the start
    stages = captured.err.splitlines()
    assert re.fullmatch(r"training: examples at 2026-04-01 \(1 of 5 cutoffs\): [\d,]+ buyers, \d+% churned in the "
                        r"90 days after, \d+ s", stages[0]), stages
    assert sum("of 5 cutoffs" in line for line in stages) == 5
    assert any(re.fullmatch(r"training: kept [\d,]+ trees .*calibrating on [\d,]+ customers, \d+ s", line)
               for line in stages), stages
    assert re.fullmatch(r"training: drift reference: [\d,]+ buyers at 2026-06-30, \d+ s", stages[-1]), stages
    assert "training:" not in out
    assert not (tmp_path / "home" / "warehouse.db").exists()
    latest = (tmp_path / "m" / "LATEST").read_text().strip()
    meta = json.loads((tmp_path / "m" / latest / "model.json").read_text())
    assert meta["horizon_days"] == 90 and meta["meta"]["data"]["events"] is False

    scores = tmp_path / "scores.csv"
    assert main(["model", "score", "--model", str(tmp_path / "m"), "--orders", orders, "--as-of", END.isoformat(),
                 "--out", str(scores), "--reasons", "50"]) == 0
    frame = pd.read_csv(scores, keep_default_na=False)
    assert list(frame.columns) == ["customer_id", "churn_probability", "reason_1", "reason_2", "reason_3"]
    assert frame["churn_probability"].between(0, 1).all()
    top = frame.nlargest(50, "churn_probability")
    assert (top["reason_1"] != "").all()
    captured = capsys.readouterr()
    assert "drift" in captured.out and "scoring:" not in captured.out
    assert re.match(r"scoring: features of [\d,]+ buyers as of 2026-06-30, \d+ s\n", captured.err), captured.err

    # a model trained with events refuses data without them, saying what differs
    assert main(["model", "train", "--orders", orders, "--events", str(csvs / "events.csv"), "--as-of",
                 END.isoformat(), "--out", str(tmp_path / "m2")]) == 0
    capsys.readouterr()
    assert main(["model", "score", "--model", str(tmp_path / "m2"), "--orders", orders, "--out", str(scores)]) == 1
    err = capsys.readouterr().err
    assert "error[L504]" in err and "missing from the data: visits_30d" in err and "events table" in err


def test_backtest_writes_json_html_and_charts(csvs, tmp_path, capsys):
    out = tmp_path / "bt"
    assert main(["model", "backtest", "--orders", str(csvs / "orders.csv"), "--events", str(csvs / "events.csv"),
                 "--as-of", END.isoformat(), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("backtest over cutoffs") and "backtest:" not in captured.out
    # a line per stage of each cutoff on stderr, training's own stages inside
    stages = captured.err.splitlines()
    assert stages[0].startswith("backtest: cutoff 1 of 3 (2026-01-31): ") and " customers to score, " in stages[0]
    assert any(line.startswith("backtest: cutoff 2 of 3 (2026-03-02): training: examples at ") for line in stages)
    assert re.fullmatch(r"backtest: cutoff 3 of 3 \(2026-04-01\): scored by the model, the base rate, recency alone "
                        r"and BG/NBD, \d+ s", stages[-1]), stages
    result = json.loads((out / "backtest.json").read_text())
    assert len(result["cutoffs"]) == 3
    assert set(result["pooled"]) == {"lightgbm", "base_rate", "recency", "bgnbd"}
    assert set(result["pooled"]["lightgbm"]) == {"roc_auc", "pr_auc", "log_loss", "brier", "top_decile_lift",
                                                 "calibration_error"}
    assert result["pooled"]["lightgbm"]["roc_auc"] > result["pooled"]["recency"]["roc_auc"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    for name in ("roc.png", "calibration.png", "lift.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_data_import_reports_bad_lines_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "orders.csv"
    bad.write_text("customer_id,ordered_at,amount\nc1,2026-01-01,1\nc2,2026-02-30,2\n")
    db = f"sqlite:///{tmp_path / 'w.db'}"
    assert main(["data", "import", "orders", str(bad), "--db", db]) == 2
    assert "orders.csv:3: column ordered_at: not an ISO 8601 date or datetime: '2026-02-30'" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text("cid,ordered_at,amount\nc1,2026-01-01,1\n")
    assert main(["data", "import", "orders", str(good), "--db", db, "--map", "cid=customer_id"]) == 2
    assert "error[L347]" in capsys.readouterr().err  # c1 is no customer of the warehouse yet
    assert main(["data", "import", "orders", str(good), "--db", db, "--map", "cid=customer_id",
                 "--create-customers"]) == 0
    assert "imported 1 order from" in capsys.readouterr().out


@pytest.mark.parametrize("content, code", [
    (b"customer_id,ordered_at,amount\nc1,2026-01-01,1,2\n", "L345"),       # a row with an extra field
    ("customer_id,ordered_at,amount\n\u5f20,2026-01-01,1\n".encode("gbk"), "L342"),
    (b"", "L341"),
    (b'customer_id,ordered_at,amount\nc1,"2026-01-01,1\n', "L343"),       # an unclosed quote
    (b"order_id,customer_id,ordered_at,amount\no1,c1,2026-01-01,1\n", "L344"),  # with --map order_id=customer_id
    (b"customer_id,ordered_at,amount\nc1,9999-12-31,inf\n", "L320"),
])
def test_data_import_never_shows_a_traceback(tmp_path, capsys, content, code):
    path = tmp_path / "orders.csv"
    path.write_bytes(content)
    db = f"sqlite:///{tmp_path / 'w.db'}"
    assert main(["data", "import", "orders", str(path), "--db", db, "--map", "order_id=customer_id"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error[{code}]: ") and "Traceback" not in err and "nothing was imported" in err


def test_data_import_maps_event_types_and_creates_customers(tmp_path, capsys):
    path = tmp_path / "events.csv"
    path.write_text("customer_id,occurred_at,type\nc1,2026-01-01,page_view\nc2,2026-01-02,app.visit\n")
    db = f"sqlite:///{tmp_path / 'w.db'}"
    assert main(["data", "import", "events", str(path), "--db", db, "--create-customers"]) == 2
    assert "--map-type page_view=" in capsys.readouterr().err
    assert main(["data", "import", "events", str(path), "--db", db, "--map-type", "page_view=product.view",
                 "--create-customers"]) == 0
    out = capsys.readouterr().out
    assert "imported 2 events" in out and "created 2 customers for them" in out


def test_data_import_takes_consents_and_suppressions_and_the_configured_timezone(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'w.db'}"
    config = tmp_path / "lifecycle.yaml"
    config.write_text("channels:\n  sms: {type: outbox}\ndefaults:\n  timezone: Asia/Shanghai\n")
    people = tmp_path / "customers.csv"
    people.write_text("customer_id,signed_up_at\nc1,2026-01-01\nc2,2026-01-01\n")
    assert main(["data", "import", "customers", str(people), "--db", db, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "imported 2 customers" in out and "2 new, 0 updated" in out
    assert "warning: 2 customers without a timezone: stored as Asia/Shanghai (defaults.timezone in lifecycle.yaml)" in out
    grants = tmp_path / "consents.csv"
    grants.write_text("customer_id,channel,purpose,granted_at\nc1,sms,marketing,2026-01-02\nc2,sms,marketing,2026-01-02\n")
    assert main(["data", "import", "consents", str(grants), "--db", db]) == 0
    assert "imported 2 consents" in capsys.readouterr().out
    blocked = tmp_path / "suppressions.csv"
    blocked.write_text("customer_id,channel,reason\nc2,,complaint\n")
    assert main(["data", "import", "suppressions", str(blocked), "--db", db]) == 0
    out = capsys.readouterr().out
    assert "imported 1 suppression" in out and "every row suppresses its customer on every channel" not in out
    errors = tmp_path / "problems.csv"
    blocked.write_text("customer_id,reason\nc2,spam\n")
    assert main(["data", "import", "suppressions", str(blocked), "--db", db, "--errors", str(errors)]) == 2
    err = capsys.readouterr().err
    assert "column reason: 'spam' is not one of complaint, hard_bounce, manual" in err and str(errors) in err
    assert main(["data", "import", "customers", str(people), "--db", db, "--default-timezone", "Asia/Shangai"]) == 2
    assert "error[L350]" in capsys.readouterr().err


def test_score_on_the_training_day_finds_no_drift(csvs, tmp_path, capsys):
    """The model's drift reference is the buyers of its as-of day, so scoring that day compares them with themselves."""
    orders = str(csvs / "orders.csv")
    assert main(["model", "train", "--orders", orders, "--as-of", END.isoformat(), "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["model", "score", "--model", str(tmp_path / "m"), "--orders", orders, "--as-of", END.isoformat(),
                 "--out", str(tmp_path / "s.csv"), "--reasons", "0"]) == 0
    assert "  drift: none (largest PSI 0.000)" in capsys.readouterr().out.splitlines()

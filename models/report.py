"""The backtest written out: JSON, three PNG charts and a one-page HTML report that needs no server."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from models.backtest import MODELS, Backtest  # noqa: E402
from models.metrics import calibration_table, lift_curve, roc_curve  # noqa: E402

LABELS = {"lightgbm": "LightGBM (calibrated)", "base_rate": "base rate", "recency": "recency alone",
          "bgnbd": "BG/NBD"}
COLORS = {"lightgbm": "#1b6ca8", "base_rate": "#999999", "recency": "#e08a1e", "bgnbd": "#3a9d5d"}
METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "top_decile_lift", "calibration_error")


def _roc(bt: Backtest, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    y = bt.predictions["label"].to_numpy()
    for m in MODELS:
        fpr, tpr = roc_curve(y, bt.predictions[m].to_numpy())
        ax.plot(fpr, tpr, label=f"{LABELS[m]} (AUC {bt.pooled[m]['roc_auc']:.3f})", color=COLORS[m])
    ax.plot([0, 1], [0, 1], ":", color="#cccccc")
    ax.set(xlabel="false positive rate (stayers flagged)", ylabel="true positive rate (churners flagged)",
           title="ROC, all backtest cutoffs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _calibration(bt: Backtest, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    y = bt.predictions["label"].to_numpy()
    for m in ("lightgbm", "recency", "bgnbd"):
        t = calibration_table(y, bt.predictions[m].to_numpy())
        ax.plot(t["predicted"], t["observed"], "o-", label=f"{LABELS[m]} (ECE {bt.pooled[m]['calibration_error']:.3f})",
                color=COLORS[m], markersize=4)
    ax.plot([0, 1], [0, 1], ":", color="#888888", label="perfect")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", xlim=(0, 1), ylim=(0, 1),
           title="Calibration (10 bins)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lift(bt: Backtest, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    y = bt.predictions["label"].to_numpy()
    for m in ("lightgbm", "recency", "bgnbd"):
        share, lift = lift_curve(y, bt.predictions[m].to_numpy())
        ax.plot(share * 100, lift, "o-", label=LABELS[m], color=COLORS[m], markersize=3)
    ax.axhline(1.0, linestyle=":", color="#888888")
    ax.set(xlabel="% of customers contacted (highest risk first)", ylabel="cumulative lift over random",
           title="Lift")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(bt: Backtest, folder: Path | str, title: str = "Churn model backtest") -> dict[str, Path]:
    """backtest.json, roc.png, calibration.png, lift.png and report.html (images embedded) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "backtest.json", "roc": folder / "roc.png", "calibration": folder / "calibration.png",
             "lift": folder / "lift.png", "html": folder / "report.html"}
    paths["json"].write_text(json.dumps(bt.to_json(), indent=1) + "\n")
    _roc(bt, paths["roc"])
    _calibration(bt, paths["calibration"])
    _lift(bt, paths["lift"])
    paths["html"].write_text(_html(bt, paths, title))
    return paths


PAGE_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.charts img{width:32%;margin-right:1%}"""


def png_data_uri(path: Path | str) -> str:
    """A PNG as a data: URI, for HTML pages and Prefect markdown artifacts that need no file next to them."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def embed_png(path: Path | str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{png_data_uri(path)}">'


def html_page(title: str, body: str, style: str = "") -> str:
    """A self-contained one-page report: the shared look plus `style`, then `body` (already HTML)."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{PAGE_STYLE}{style}</style></head><body>
<h1>{html.escape(title)}</h1>
{body}
</body></html>
"""


def _table(rows: dict[str, dict[str, float]]) -> str:
    head = "<tr><th>model</th>" + "".join(f"<th>{m.replace('_', ' ')}</th>" for m in METRICS) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(LABELS[m])}</td>" + "".join(f"<td>{rows[m][k]:.4f}</td>" for k in METRICS) + "</tr>"
        for m in MODELS)
    return f"<table>{head}{body}</table>"


def _html(bt: Backtest, paths: dict[str, Path], title: str) -> str:
    def img(key: str) -> str:
        return embed_png(paths[key], key)

    cutoffs = "".join(f"<h3>cutoff {html.escape(c)} (model {html.escape(bt.models[c])})</h3>{_table(r)}"
                      for c, r in bt.per_cutoff.items())
    base = bt.predictions["label"].mean()
    return html_page(title, f"""<p>Churn = no order in the {bt.horizon_days} days after a cutoff. For each cutoff the model was trained on data up
to that cutoff only and scored on every customer with an order by then; {len(bt.predictions):,} scored customers in
all, {base:.1%} of whom churned. Baselines on the same rows: the base rate, recency alone, BG/NBD.</p>
<h2>All cutoffs together</h2>{_table(bt.pooled)}
<div class="charts">{img("roc")}{img("calibration")}{img("lift")}</div>
<h2>Per cutoff</h2>{cutoffs}""")

"""`lifecycle uplift PLAYBOOK`: learn who the playbook's touch changes from its randomised history, and show on
customers the model never saw whether targeting by uplift beats targeting by churn risk at the same budget.

Writes uplift.json, uplift.png (incremental conversions by share targeted: uplift, risk, random) and
uplift.html to --out (default $LIFECYCLE_HOME/reports/uplift/PLAYBOOK), and registers the model (unless
--no-register) so a playbook's rules can use `uplift_score`. Counts only: no customer in any output.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path


def add_arguments(sub, common: argparse.ArgumentParser, date_type) -> None:
    p = sub.add_parser("uplift", parents=[common], help="train an uplift model on a playbook's holdout history; "
                       "compare uplift and risk targeting on held-out customers")
    p.add_argument("playbook", help="a playbook name or path (its ledger rows are the history)")
    p.add_argument("--from", dest="start", type=date_type, metavar="DATE", help="first as-of day of the history")
    p.add_argument("--to", dest="end", type=date_type, metavar="DATE", help="last as-of day of the history")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--out", metavar="DIR", help="report folder (default: $LIFECYCLE_HOME/reports/uplift/PLAYBOOK)")
    p.add_argument("--no-register", action="store_true", help="evaluate only; do not register the model")


def uplift_cmd(args: argparse.Namespace) -> int:
    from flows.commands import _context, resolve_playbook
    from flows.compiler import compile_file
    from infra.progress import Progress
    from infra.settings import lifecycle_home
    from models import registry
    from tasks.uplift import train_and_evaluate

    config, _, engine = _context(args)
    plan = compile_file(resolve_playbook(args.playbook), config)
    model, ev, history = train_and_evaluate(engine, plan, args.start, args.end,
                                            progress=Progress(sys.stderr, "uplift: "))
    if not args.no_register:
        registry.save(engine, model)
    folder = Path(args.out) if args.out else lifecycle_home() / "reports" / "uplift" / plan.name
    paths = write_report(model, ev, folder)
    if args.format == "json":
        print(json.dumps({"playbook": plan.name, "model_version": model.version, "registered": not args.no_register,
                          "train": model.meta["train"], "history": model.meta["history"],
                          "evaluation": ev.to_json()}, indent=1))
    else:
        print("\n".join(summary_lines(model, ev, registered=not args.no_register)))
    print(f"report: {paths['html']}", file=sys.stderr)
    return 0


def summary_lines(model, ev, *, registered: bool) -> list[str]:
    t, h = model.meta["train"], model.meta["history"]
    lines = [f"uplift model {model.version} for {model.playbook} (goal {model.meta.get('goal')} within "
             f"{model.window_days} days)",
             f"  learned from {t['treated'] + t['control']:,} customers of the runs {h['from']} to {h['to']}: "
             f"{t['treated']:,} treated ({t['treated_conversions']:,} converted), {t['control']:,} held out "
             f"({t['control_conversions']:,} converted)"]
    lines += ["  " + line for line in ev.lines()]  # ending with the verdict: a winner with its interval, or why none
    if not model.meta.get("risk_recorded", True):
        lines.append("  no churn score was recorded with these touches: the risk ranking is random")
    lines.append("  registered: rules of this playbook may use uplift_score" if registered
                 else "  not registered (--no-register)")
    return lines


def _named(winner: str | None) -> str:
    return {"uplift": "uplift", "risk": "churn risk"}.get(winner or "", "none: too little evidence")


def write_report(model, ev, folder: Path | str) -> dict[str, Path]:
    from models.report import embed_png, html_page
    from models.uplift import DRAWS, MIN_VERDICT_CONVERSIONS, chart, with_interval

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "uplift.json", "chart": folder / "uplift.png", "html": folder / "uplift.html"}
    paths["json"].write_text(json.dumps({"model_version": model.version, "playbook": model.playbook,
                                         "train": model.meta["train"], "history": model.meta["history"],
                                         "evaluation": ev.to_json()}, indent=1) + "\n")
    chart(ev, paths["chart"], f"{model.playbook}: who to target")
    rows = "".join(
        f"<tr><td>{r['share']:.0%}</td><td>{int(r['n']):,}</td><td>{r['uplift']:+.1f}</td><td>{r['risk']:+.1f}</td>"
        f"<td>{r['random']:+.1f}</td><td>{int(r['control_uplift'])} / {int(r['control_risk'])}</td></tr>"
        for r in ev.curves.to_dict("records"))
    budgets = "".join(
        f"<tr><td>{b.share:.0%}</td><td>{b.n:,}</td><td>{html.escape(with_interval(b.uplift))}</td>"
        f"<td>{html.escape(with_interval(b.risk))}</td><td>{html.escape(with_interval(b.difference))}</td>"
        f"<td>{b.conversions['treated']:,} / {b.conversions['control']:,}</td>"
        f"<td>{html.escape(_named(b.winner))}</td></tr>" for b in ev.budgets)
    body = (f"<p>{'<br>'.join(html.escape(line) for line in summary_lines(model, ev, registered=True)[1:-1])}</p>"
            f'<div class="chart">{embed_png(paths["chart"], "incremental conversions by share targeted")}</div>'
            + ("<h2>Which ranking finds more, with 95% intervals</h2><p>Incremental conversions among the top share "
               "of held-out customers, with a bootstrap interval (the customers resampled "
               f"{DRAWS:,} times, the rankings fixed). A winner is named only when the interval of the difference "
               f"excludes 0 and each arm has {MIN_VERDICT_CONVERSIONS} or more conversions among the customers "
               "either ranking targets.</p>"
               "<table><tr><th>targeted</th><th>customers</th><th>by uplift</th><th>by churn risk</th>"
               "<th>uplift - risk</th><th>conversions behind it (treated / held out)</th><th>winner</th></tr>"
               f"{budgets}</table>" if ev.budgets else "")
            + "<h2>Incremental conversions by share of held-out customers targeted</h2>"
            "<p>(treated rate - control rate) among the top share of each ranking, times the customers in it. "
            "The model never saw these customers; the last column is how many held-out customers each pair of "
            "numbers rests on.</p>"
            "<table><tr><th>targeted</th><th>customers</th><th>by uplift</th><th>by churn risk</th><th>at random</th>"
            f"<th>control behind (uplift / risk)</th></tr>{rows}</table>")
    paths["html"].write_text(html_page(f"Uplift vs risk targeting: {model.playbook}", body))
    return paths

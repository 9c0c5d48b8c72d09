"""Playbook YAML --load--> SourceDoc --parse--> PlaybookSpec --compile--> Plan.

Pure: no Prefect, no database, no LightGBM. Every problem an author can cause is collected (not
just the first) and reported as `path:line:col: error[CODE] message`, the line with a caret, and a
hint. The codes are listed in infra/errors.py and the author's guide.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import functools
import re
import zoneinfo
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flows import lint
from flows.expr import ExprError, compile_expr, features_used
from flows.plan import (Budget, Experiment, FollowUpPlan, FrequencyCap, Goal, Guardrails, OfferPlan, Plan,
                        QuietHours, Reentry, Schedule, SegmentPlan, TierPlan, Trigger, VariantPlan)
from flows.schema import OfferSpec, PlaybookSpec, TierSpec, allowed_keys
from infra.errors import AuthorError
from infra.settings import CONSENT_CHANNELS, EVENT_TYPES, MODELS, ProjectConfig
from infra.yamlsource import (KeyPath, Position, SourceDoc, data_prefix, format_located, load_yaml, position_key,
                              validation_problems)
from tasks.catalog import BY_NAME, Feature
from tasks.render import BASE_CONTEXT, MAX_TEMPLATE_CHARS, template_variables
from tasks.templatecheck import TemplateProblem, check_template, references, template_name_problem

# Features a follow-up rule may use besides the catalog: facts about the touch it follows up on.
FOLLOW_UP_FEATURES = {
    "orders_since_touch": Feature("orders_since_touch", "integer", "orders",
                                  "orders placed since the main touch (follow-up rules only)"),
    "days_since_touch": Feature("days_since_touch", "integer", "days",
                                "days since the main touch (follow-up rules only)"),
}
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


# Message context values that are text: `%` on them is formatting, not arithmetic (L148).
TEXT_NAMES = frozenset({"customer_id", "first_name", "advisor_id", "segment", "playbook", "channel", "variant",
                        "unsubscribe_url"} | {f.name for f in BY_NAME.values() if f.type == "string"})


class PlaybookError(AuthorError):
    code = "L100"

    def __init__(self, problems: list[str], path: Path) -> None:
        # the playbook's own problems top to bottom, then each template file's
        mine = f"{path}:"
        problems = sorted(problems, key=lambda p: (not p.startswith(mine), "" if p.startswith(mine) else
                                                   p.split(":", 1)[0], position_key(p)))
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {path}",
                         hint=f"fix them and run `lifecycle check {path}` again", problems=problems)


def load(path: str | Path) -> SourceDoc:
    return load_yaml(Path(path), kind="playbook")


def parse(doc: SourceDoc) -> PlaybookSpec:
    spec, problems = _parse(doc)
    if spec is None or problems:
        raise PlaybookError(problems, doc.path)
    return spec


def _parse(doc: SourceDoc) -> tuple[PlaybookSpec | None, list[str]]:
    """The spec and the schema problems. Wrong keys of mappings are set aside so the rest can still
    be checked; when that is not possible (a required key is wrong) the schema problems are all."""
    problems = list(doc.problems)
    if not isinstance(doc.data, dict):
        return None, problems + [format_located(doc, (), "a playbook must be a mapping of keys",
                                                "start with `name:`, `audience:` and `segments:`", code="L106")]
    try:
        return PlaybookSpec.model_validate(doc.data), problems
    except ValidationError as exc:
        problems += validation_problems(doc, exc, allowed_keys)
        pruned = copy.deepcopy(doc.data)
        for err in exc.errors():
            loc = tuple(err["loc"]) if err["type"] == "extra_forbidden" else data_prefix(doc.data, tuple(err["loc"]))
            if err["type"] == "missing" or not loc or not isinstance(loc[-1], str):
                return None, problems
            parent = pruned
            for part in loc[:-1]:
                parent = parent[part]
            parent.pop(loc[-1], None)
        try:
            return PlaybookSpec.model_validate(pruned), problems
        except ValidationError:
            return None, problems


def compile_file(path: str | Path, config: ProjectConfig) -> Plan:
    """Load, parse and compile one playbook file; raises PlaybookError listing every problem."""
    doc = load(path)
    spec, problems = _parse(doc)
    if spec is None:
        raise PlaybookError(problems, doc.path)
    return compile_playbook(doc, spec, config, problems)


def compile_playbook(doc: SourceDoc, spec: PlaybookSpec, config: ProjectConfig,
                     problems: list[str] | None = None) -> Plan:
    """Resolve and check everything; raise PlaybookError with all problems (earlier ones included)."""
    return _Compilation(doc, spec, config, list(problems or [])).run()


class _Compilation:
    """One playbook being compiled: collects problems and the features its rules read."""

    def __init__(self, doc: SourceDoc, spec: PlaybookSpec, config: ProjectConfig, problems: list[str]) -> None:
        self.doc, self.spec, self.config, self.problems = doc, spec, config, problems
        self.used: set[str] = set()
        self.templates_dir = doc.path.parent / "templates"
        self.template_cache: dict[str, str | None] = {}
        self.file_vars: dict[str, frozenset[str]] = {}  # template file -> variables it and its partials read
        self.partials: dict[str, str] = {}  # every file the plan's templates include, import or extend

    def problem(self, key: KeyPath, message: str, hint: str | None = None, *, code: str, at=None) -> None:
        self.problems.append(format_located(self.doc, key, message, hint, code=code, at=at))

    def run(self) -> Plan:
        spec = self.spec
        if spec.name != self.doc.path.stem:
            stem = self.doc.path.stem
            self.problem(("name",), f"name '{spec.name}' does not match the file name '{stem}'",
                         f"rename the file to {spec.name}.yaml or set `name: {stem}`", code="L124")
        if spec.model != "none" and spec.model not in MODELS:
            self.problem(("model",), f"unknown model '{spec.model}'", _did_you_mean(spec.model, [*MODELS, "none"]),
                         code="L136")
        audience = self.expression(("audience",), spec.audience) if spec.audience else None
        segments = self.segments()
        follow_ups = self.follow_ups({s.name for s in spec.segments})
        plan_parts = dict(schedule=self.schedule(), trigger=self.event_of(("trigger",), spec.trigger, Trigger),
                          guardrails=self.guardrails(), experiment=self.experiment(), goal=self.goal(),
                          reentry=self.reentry())
        if self.problems:
            raise PlaybookError(self.problems, self.doc.path)
        if spec.model != "none":
            self.used.add("churn_score")
        return Plan(
            name=spec.name, description=spec.description.strip(), owner=spec.owner, version=str(spec.version),
            source=str(self.doc.path), model=None if spec.model == "none" else spec.model,
            drift_policy=spec.drift_policy, audience=audience, audience_text=spec.audience,
            segments=tuple(segments), follow_ups=tuple(follow_ups),
            features=tuple(sorted(self.used - set(FOLLOW_UP_FEATURES))), partials=dict(sorted(self.partials.items())),
            **plan_parts,
        )

    # ---- rules ------------------------------------------------------------------------------

    def expression(self, key: KeyPath, text: str, features: dict[str, Feature] = BY_NAME) -> dict | None:
        try:
            tree = compile_expr(text, features)
        except ExprError as err:
            at = self.doc.inside_value(key, err.col - 1) if err.col and "\n" not in text.strip() else None
            self.problem(key, err.message, err.hint, code=err.code, at=at)
            return None
        names = features_used(tree)
        if "churn_score" in names and self.spec.model == "none":
            self.problem(key, "this rule uses churn_score but the playbook has `model: none`",
                         "set `model: churn` or drop churn_score from the rule", code="L142")
        if "uplift_score" in names and key[0] not in ("audience", "segments"):
            self.problem(key, "uplift_score can only be used in the audience and segment rules",
                         "follow-ups are decided later, without the uplift model: gate the main step on it instead",
                         code="L144")
        elif "uplift_score" in names and self.spec.goal is None:
            self.problem(key, "this rule uses uplift_score but the playbook has no `goal`",
                         "uplift is the change a touch makes to the goal: add `goal: {event: order.placed, "
                         "window_days: 14}`, then train the model with `lifecycle uplift NAME`", code="L144")
        self.used.update(names)
        return tree

    def segments(self) -> list[SegmentPlan]:
        out, seen, rules = [], set(), []
        last = len(self.spec.segments) - 1
        for i, seg in enumerate(self.spec.segments):
            where = ("segments", i)
            if seg.name in seen:
                self.problem((*where, "name"), f"segment '{seg.name}' is defined twice", "give each segment its own name",
                             code="L125")
            seen.add(seg.name)
            rule, ok = None, True
            if seg.else_ and seg.when:
                ok = False
                self.problem((*where, "else"), "a segment has either `when:` or `else: true`, not both",
                             "drop one of them", code="L140")
            elif seg.else_ and i != last:
                self.problem((*where, "else"), "the `else` segment must be the last one",
                             "segments are tried in order; move it to the end", code="L140")
            elif not seg.else_ and not seg.when:
                ok = False
                self.problem(where, f"segment '{seg.name}' has no `when:` rule",
                             "add `when: <rule>`, or `else: true` on the last segment", code="L140")
            elif seg.when:
                rule = self.expression((*where, "when"), seg.when)
                ok = rule is not None
            if ok:
                rules.append((i, seg.name, rule))
            out.append(SegmentPlan(name=seg.name, rule=rule, rule_text=seg.when,
                                   tiers=self.tiers((*where, "tiers"), seg.tiers)))
        for k, earlier in lint.shadowed([(name, rule) for _, name, rule in rules]):
            i, name = rules[k][0], rules[k][1]
            key = ("segments", i, "when" if rules[k][2] is not None else "else")
            if earlier is None:
                self.problem(key, f"segment '{name}' can never match: its conditions contradict each other",
                             "check the comparison directions and bounds", code="L141")
            else:
                self.problem(key, f"segment '{name}' can never match: every customer it selects is taken "
                             f"by the earlier segment '{earlier}' (first match wins)",
                             f"move '{name}' above '{earlier}', or narrow '{earlier}'", code="L141")
        return out

    def follow_ups(self, segment_names: set[str]) -> list[FollowUpPlan]:
        out, seen = [], set()
        features = {**BY_NAME, **FOLLOW_UP_FEATURES}
        for i, step in enumerate(self.spec.follow_up):
            where = ("follow_up", i)
            if step.name in seen:
                self.problem((*where, "name"), f"follow-up '{step.name}' is defined twice",
                             "give each follow-up its own name", code="L125")
            seen.add(step.name)
            for k, name in enumerate(step.segments or []):
                if name not in segment_names:
                    self.problem((*where, "segments", k), f"unknown segment '{name}'",
                                 _did_you_mean(name, sorted(segment_names)), code="L137")
            rule = self.expression((*where, "when"), step.when, features) if step.when else None
            out.append(FollowUpPlan(
                name=step.name, after_days=step.after_days, rule=rule, rule_text=step.when,
                segments=tuple(step.segments or [s.name for s in self.spec.segments]),
                tiers=self.tiers((*where, "tiers"), step.tiers),
            ))
        return out

    # ---- tiers, templates, offers ------------------------------------------------------------

    def tiers(self, key: KeyPath, specs: list[TierSpec]) -> tuple[TierPlan, ...]:
        return tuple(t for t in (self.tier((*key, j), spec) for j, spec in enumerate(specs)) if t is not None)

    def tier(self, key: KeyPath, spec: TierSpec) -> TierPlan | None:
        channel = self.config.channels.get(spec.channel)
        consent = (channel.consent or spec.channel) if channel else None
        if channel is None:
            hint = _did_you_mean(spec.channel, list(self.config.channels)) or (
                f"channels in {self.config.source}: {', '.join(sorted(self.config.channels)) or 'none'}")
            self.problem((*key, "channel"), f"unknown channel '{spec.channel}'", hint, code="L130")
        elif consent not in CONSENT_CHANNELS:
            self.problem((*key, "channel"),
                         f"channel '{spec.channel}' is governed by consent '{consent}', which no customer can give",
                         f"set `consent:` for {spec.channel} in {self.config.source} to one of: "
                         f"{', '.join(CONSENT_CHANNELS)}", code="L131")
        offer = self.offer(spec.offer)
        body, html = self.template(key, spec.template, spec.subject, offer is not None, consent)
        variants = self.variants(key, spec, offer, consent)
        if channel is None or body is None:
            return None
        return TierPlan(channel=spec.channel, channel_type=channel.type, consent_channel=consent or spec.channel,
                        purpose=channel.purpose, template=spec.template, body=body, subject=spec.subject, html=html,
                        offer=offer, capacity=spec.capacity, variants=variants)

    def variants(self, key: KeyPath, spec: TierSpec, offer: OfferPlan | None,
                 consent: str | None) -> tuple[VariantPlan, ...]:
        if not spec.variants:
            return ()
        out, seen = [], set()
        for k, v in enumerate(spec.variants):
            vkey = (*key, "variants", k)
            if v.name in seen:
                self.problem((*vkey, "name"), f"variant '{v.name}' is defined twice", "give each variant its own name",
                             code="L125")
            seen.add(v.name)
            v_offer = None if v.no_offer else (self.offer(v.offer) if v.offer else offer)
            template = v.template or spec.template
            subject = v.subject if v.subject is not None else spec.subject
            if v.template is None and v.subject is None and (v_offer is None) == (offer is None):
                # the tier's own message, already checked (and reported) once
                body, html = self.template_cache.get(template), template.endswith((".html", ".html.j2"))
            else:
                body, html = self.template(vkey, template, subject, v_offer is not None, consent)
            if body is not None:
                out.append(VariantPlan(name=v.name, split=v.split, template=template, body=body, subject=subject,
                                       html=html, offer=v_offer))
        total = sum(v.split for v in spec.variants)
        if abs(total - 100) > 1e-6:
            self.problem((*key, "variants"), f"variant splits add up to {total:g}%, not 100%",
                         "make the `split:` values of this tier's variants sum to 100", code="L150")
        return tuple(out)

    def offer(self, spec: OfferSpec | None) -> OfferPlan | None:
        if spec is None:
            return None
        return OfferPlan(coupon_pool=spec.coupon_pool, unit_cost=spec.unit_cost, currency=spec.currency.upper(),
                         valid_days=spec.valid_days)

    def template(self, key: KeyPath, name: str, subject: str | None, offer: bool,
                 consent: str | None) -> tuple[str | None, bool]:
        """The template's text, checked as sending will render it (None when it cannot be used). Problems in
        a template file (or a partial it loads) point into that file; the tier's own (no offer, no
        unsubscribe link) at the tier."""
        body = self.read_template((*key, "template"), name)
        html = name.endswith((".html", ".html.j2"))
        for source, field in ((body, "template"), (subject, "subject")):
            if source is None:
                continue
            if field == "template":
                variables = self.template_file(name, html, ())
            else:
                variables = self.subject((*key, "subject"), source)
            if "offer" in variables and not offer:
                label = name if field == "template" else "subject"
                self.problem((*key, field), f"{label}: uses `offer`, but this tier has no offer",
                             "give this tier an `offer:`, or drop offer from the template", code="L143")
        if body is not None and consent == "email" and "unsubscribe_url" not in self.file_vars.get(name, ()):
            self.problem((*key, "template"), f"{name}: an email must carry an unsubscribe link",
                         "add `<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>` to the template", code="L138")
        return body, html

    def template_file(self, name: str, html: bool, stack: tuple[str, ...]) -> frozenset[str]:
        """Check a template file once (and the files it loads, recursively; L156 missing, L157 a cycle);
        the variables it and they read."""
        if name in self.file_vars:
            return self.file_vars[name]
        body = self.template_cache.get(name)
        if body is None:
            return frozenset()
        self.file_vars[name] = frozenset()  # while it is being checked (a cycle is reported, not followed)
        tdoc = SourceDoc(self.doc.path.parent / "templates" / name, body, None, {}, {})
        for p in _checked(body, html):
            self.template_problem(tdoc, p)
        variables = set(template_variables(body))
        for ref, line in references(body):
            if template_name_problem(ref):
                continue  # reported by the check above (L146)
            at = Position(line, _column(body, line, ref))
            if ref in stack or ref == name:
                before = stack[stack.index(ref):] if ref in stack else ()
                cycle = " -> ".join((*before, name, ref))
                self.template_problem(tdoc, TemplateProblem(
                    "L157", f"templates load each other in a cycle: {cycle}",
                    "a partial must not load the template that loads it", at.line, at.col))
                continue
            if self.load_partial(ref) is None:
                self.template_problem(tdoc, self.missing_partial(ref, at))
                continue
            variables |= self.template_file(ref, html, (*stack, name))
        self.file_vars[name] = frozenset(variables)
        return self.file_vars[name]

    def subject(self, key: KeyPath, subject: str) -> frozenset[str]:
        """Check a subject line (written in the playbook: its problems point at the `subject:` key)."""
        for p in _checked(subject, False):
            where = f"line {p.line}: " if p.line and "\n" in subject.strip() else ""
            self.problem(key, f"subject: {where}{p.message}", p.hint, code=p.code)
        variables = set(template_variables(subject))
        for ref, _ in references(subject):
            if template_name_problem(ref):
                continue
            if self.load_partial(ref) is None:
                p = self.missing_partial(ref, None)
                self.problem(key, f"subject: {p.message}", p.hint, code=p.code)
            else:
                variables |= self.template_file(ref, False, ())
        return frozenset(variables)

    def load_partial(self, name: str) -> str | None:
        if name not in self.template_cache:
            self.template_cache[name] = self._read(name)
        body = self.template_cache[name]
        if body is not None:
            self.partials[name] = body
        return body

    def missing_partial(self, name: str, at: Position | None) -> TemplateProblem:
        folder = self.templates_dir
        existing = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
            if folder.is_dir() else []
        return TemplateProblem("L156", f"'{name}' is not a file in templates/",
                               _did_you_mean(name, existing) or f"create {folder / name}",
                               at.line if at else None, at.col if at else None)

    def template_problem(self, tdoc: SourceDoc, p: TemplateProblem) -> None:
        """A problem inside a template file, at its line and column there."""
        at = Position(p.line or 1, p.col or 1)
        self.problems.append(format_located(tdoc, (), p.message, p.hint, code=p.code, at=at))

    def read_template(self, key: KeyPath, name: str) -> str | None:
        if name not in self.template_cache:
            self.template_cache[name] = self._read(name)
        body = self.template_cache[name]
        if body is None:
            folder = self.templates_dir
            if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", name) or ".." in Path(name).parts:
                self.problem(key, f"template '{name}' must be a file inside the playbook's templates/ folder",
                             "name a file in templates/, e.g. winback_sms.txt.j2", code="L132")
            else:
                existing = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
                hint = _did_you_mean(name, existing) or f"create {folder / name}"
                self.problem(key, f"template file not found: {Path(folder.name) / name} (next to the playbook)", hint,
                             code="L132")
        return body

    def _read(self, name: str) -> str | None:
        folder = self.templates_dir.resolve()
        if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", name) or ".." in Path(name).parts:
            return None
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            return None
        try:
            with path.open("rb") as f:  # a huge file is read only far enough to be reported as too long
                data = f.read(4 * MAX_TEMPLATE_CHARS + 4)
            return data.decode("utf-8", errors="ignore" if len(data) > 4 * MAX_TEMPLATE_CHARS else "strict")
        except (OSError, UnicodeDecodeError):
            return None

    # ---- when, guardrails, experiment, goal --------------------------------------------------

    def schedule(self) -> Schedule | None:
        spec = self.spec.schedule
        if spec is None:
            return None
        ok = self.timezone(("schedule", "timezone"), spec.timezone)
        problem = cron_problem(spec.cron)
        if problem:
            self.problem(("schedule", "cron"), f"invalid cron '{spec.cron}': {problem}",
                         "five fields: minute hour day-of-month month day-of-week, e.g. '0 10 * * *' (10:00 daily)",
                         code="L151")
            ok = False
        return Schedule(cron=spec.cron, timezone=spec.timezone) if ok else None

    def timezone(self, key: KeyPath, name: str) -> bool:
        try:
            zoneinfo.ZoneInfo(name)
            return True
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            hint = _did_you_mean(name, _timezones()) or \
                "use an IANA name such as Asia/Shanghai or Europe/Berlin"
            self.problem(key, f"unknown timezone '{name}'", hint, code="L152")
            return False

    def event_of(self, key: KeyPath, spec: Any, cls: type) -> Any:
        if spec is None:
            return None
        if spec.event not in EVENT_TYPES:
            self.problem((*key, "event"), f"unknown event type '{spec.event}'",
                         _did_you_mean(spec.event, list(EVENT_TYPES)) or f"event types: {', '.join(EVENT_TYPES)}",
                         code="L153")
            return None
        return cls(**spec.model_dump())

    def guardrails(self) -> Guardrails:
        g = self.spec.guardrails
        quiet = None
        if g.quiet_hours is not None:
            bad = [k for k in ("start", "end") if not _TIME.match(getattr(g.quiet_hours, k))]
            for k in bad:
                self.problem(("guardrails", "quiet_hours", k), f"'{getattr(g.quiet_hours, k)}' is not a time of day",
                             "write 24-hour HH:MM in quotes, e.g. \"21:00\"", code="L154")
            if not bad and g.quiet_hours.start == g.quiet_hours.end:
                self.problem(("guardrails", "quiet_hours"), "quiet hours start and end at the same time",
                             "give a window, e.g. start: \"21:00\", end: \"09:00\"", code="L154")
            quiet = QuietHours(**g.quiet_hours.model_dump())
        budget = Budget(amount=g.budget.amount, currency=g.budget.currency.upper()) if g.budget else None
        if budget:
            for key, offer in self.offers():
                if offer.currency.upper() != budget.currency:
                    self.problem((*key, "currency"), f"offer in {offer.currency.upper()} but the budget is in "
                                 f"{budget.currency}", "use one currency per playbook", code="L122")
        cap = FrequencyCap(**g.frequency_cap.model_dump()) if g.frequency_cap else None
        return Guardrails(frequency_cap=cap, quiet_hours=quiet, priority=g.priority, budget=budget)

    def offers(self):
        """(key path, offer) for every offer in the playbook."""
        groups = [("segments", i, s.tiers) for i, s in enumerate(self.spec.segments)]
        groups += [("follow_up", i, f.tiers) for i, f in enumerate(self.spec.follow_up)]
        for part, i, tiers in groups:
            for j, t in enumerate(tiers):
                if t.offer:
                    yield (part, i, "tiers", j, "offer"), t.offer
                for k, v in enumerate(t.variants or []):
                    if v.offer:
                        yield (part, i, "tiers", j, "variants", k, "offer"), v.offer

    def reentry(self) -> Reentry:
        r = self.spec.reentry
        if r.mode == "after" and r.days is None:
            self.problem(("reentry",), "re-entry `after` needs `days`",
                         "say how long after their last entry a customer may enter again, e.g. days: 30", code="L155")
        if r.mode != "after" and r.days is not None:
            self.problem(("reentry", "days"), f"`days` only applies to mode: after (this is mode: {r.mode})",
                         "set mode: after, or remove days", code="L155")
        return Reentry(mode=r.mode, days=r.days if r.mode == "after" else None)

    def experiment(self) -> Experiment | None:
        e = self.spec.experiment
        if e is None:
            return None
        return Experiment(holdout_percent=e.holdout_percent, salt=e.salt or self.spec.name)

    def goal(self) -> Goal | None:
        return self.event_of(("goal",), self.spec.goal, Goal)


@functools.lru_cache(maxsize=1024)
def _checked(source: str, html: bool) -> tuple[TemplateProblem, ...]:
    """A template's own problems against the message context; cached, as many tiers share a template."""
    return tuple(check_template(source, set(BASE_CONTEXT) | set(BY_NAME), html=html, offer=True,
                                text_names=TEXT_NAMES))


def _column(text: str, line: int, needle: str) -> int:
    lines = text.splitlines()
    row = lines[line - 1] if 1 <= line <= len(lines) else ""
    return row.find(needle) + 1 if needle in row else len(row) - len(row.lstrip()) + 1


def cron_problem(expr: str) -> str | None:
    """What is wrong with a cron expression (None when it is fine), judged by cronsim."""
    from cronsim import CronSim, CronSimError

    if len(expr.split()) != 5:
        return f"expected 5 fields, got {len(expr.split())}"
    try:
        next(CronSim(expr, dt.datetime(2026, 1, 1)))
    except (CronSimError, ValueError, StopIteration) as exc:
        return str(exc) or "it never fires"
    return None


@functools.cache
def _timezones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


def _did_you_mean(name: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else None

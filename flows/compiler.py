"""Playbook YAML --load--> SourceDoc --parse--> PlaybookSpec --compile--> Plan.

Pure: no Prefect, no database, no LightGBM. Every problem an author can cause is collected (not
just the first) and reported as `file:line:col`, the line with a caret, and a hint.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flows.expr import ExprError, compile_expr, features_used
from flows.plan import Plan, SegmentPlan, TierPlan
from infra.errors import AuthorError
from infra.settings import ProjectConfig
from infra.yamlsource import KeyPath, SourceDoc, format_located, load_yaml, validation_problems
from tasks.catalog import BY_NAME
from tasks.render import BASE_CONTEXT, check_template

NAME_RE = r"^[a-z][a-z0-9_]{0,63}$"


class TierSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str
    template: str = Field(description="template file, relative to the playbook's templates/ folder")
    subject: str | None = Field(None, description="email subject line (a template too)")


class SegmentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME_RE)
    when: str | None = None
    else_: bool = Field(False, alias="else")
    tiers: list[TierSpec] = Field(min_length=1)


class PlaybookSpec(BaseModel):
    """The authored shape of a playbook, before anything is resolved."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE)
    description: str = ""
    owner: str | None = None
    version: str | int = 1
    model: Literal["churn", "none"] = "churn"
    audience: str | None = None
    segments: list[SegmentSpec] = Field(min_length=1)


class PlaybookError(AuthorError):
    code = "L100"

    def __init__(self, problems: list[str], path: Path) -> None:
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in {path}",
                         hint=f"fix them and run `lifecycle check {path}` again")
        self.problems = problems

    def render(self) -> str:
        """Every problem, located, then one summary line with the code."""
        return "\n\n".join(self.problems) + "\n\n" + super().render()


def _allowed_keys(parent: KeyPath) -> list[str]:
    """Keys allowed at `parent` (for "did you mean" and "allowed keys here")."""
    model: type[BaseModel] = PlaybookSpec
    named = [p for p in parent if not isinstance(p, int)]
    if named[:1] == ["segments"]:
        model = SegmentSpec
    if named[:2] == ["segments", "tiers"]:
        model = TierSpec
    return sorted(f.alias or name for name, f in model.model_fields.items())


def load(path: str | Path) -> SourceDoc:
    return load_yaml(Path(path), kind="playbook")


def parse(doc: SourceDoc) -> PlaybookSpec:
    spec, problems = _parse(doc)
    if problems:
        raise PlaybookError(problems, doc.path)
    return spec


def _parse(doc: SourceDoc) -> tuple[PlaybookSpec | None, list[str]]:
    """The spec and the schema problems; unknown keys are set aside so the rest can still be checked."""
    if not isinstance(doc.data, dict):
        return None, [format_located(doc, (), "a playbook must be a mapping of keys",
                                     "start with `name:`, `audience:` and `segments:`")]
    try:
        return PlaybookSpec.model_validate(doc.data), []
    except ValidationError as exc:
        problems = validation_problems(doc, exc, _allowed_keys)
        unknown = [tuple(e["loc"]) for e in exc.errors() if e["type"] == "extra_forbidden"]
        if len(unknown) < len(exc.errors()):
            return None, problems
        pruned = copy.deepcopy(doc.data)
        for loc in unknown:
            parent = pruned
            for part in loc[:-1]:
                parent = parent[part]
            parent.pop(loc[-1], None)
        return PlaybookSpec.model_validate(pruned), problems


def _expr_problem(doc: SourceDoc, key: KeyPath, text: str, err: ExprError) -> str:
    """An expression error, pointed at its column inside the YAML value when the value is one line."""
    at = doc.inside_value(key, err.col - 1) if "\n" not in text.strip() else None
    return format_located(doc, key, err.message, err.hint, at=at)


def compile_playbook(doc: SourceDoc, spec: PlaybookSpec, config: ProjectConfig,
                     problems: list[str] | None = None) -> Plan:
    """Resolve and check everything; raise PlaybookError with all problems (earlier ones included)."""
    problems = list(problems or [])
    stem = doc.path.stem
    if spec.name != stem:
        problems.append(format_located(doc, ("name",), f"name '{spec.name}' does not match the file name '{stem}'",
                                       f"rename the file to {spec.name}.yaml or set `name: {stem}`"))
    templates_dir = doc.path.parent / "templates"
    used: set[str] = set()

    def expression(key: KeyPath, text: str) -> dict | None:
        try:
            tree = compile_expr(text)
        except ExprError as err:
            problems.append(_expr_problem(doc, key, text, err))
            return None
        names = features_used(tree)
        if "churn_score" in names and spec.model == "none":
            problems.append(format_located(doc, key, "this rule uses churn_score but the playbook has `model: none`",
                                           "set `model: churn` or drop churn_score from the rule"))
        used.update(names)
        return tree

    audience = expression(("audience",), spec.audience) if spec.audience else None
    allowed_vars = set(BASE_CONTEXT) | set(BY_NAME)
    segments: list[SegmentPlan] = []
    seen: set[str] = set()
    for i, seg in enumerate(spec.segments):
        where = ("segments", i)
        if seg.name in seen:
            problems.append(format_located(doc, (*where, "name"), f"segment '{seg.name}' is defined twice",
                                           "give each segment its own name"))
        seen.add(seg.name)
        rule = None
        if seg.else_ and seg.when:
            problems.append(format_located(doc, (*where, "else"), "a segment has either `when:` or `else: true`, not both"))
        elif seg.else_ and i != len(spec.segments) - 1:
            problems.append(format_located(doc, (*where, "else"), "the `else` segment must be the last one",
                                           "segments are tried in order; move it to the end"))
        elif not seg.else_ and not seg.when:
            problems.append(format_located(doc, where, f"segment '{seg.name}' has no `when:` rule",
                                           "add `when: <rule>`, or `else: true` on the last segment"))
        elif seg.when:
            rule = expression((*where, "when"), seg.when)
        tiers = []
        for j, tier in enumerate(seg.tiers):
            tkey = (*where, "tiers", j)
            channel = config.channels.get(tier.channel)
            if channel is None:
                close = difflib.get_close_matches(tier.channel, list(config.channels), n=1)
                hint = f"did you mean '{close[0]}'?" if close else (
                    f"channels in {config.source}: {', '.join(sorted(config.channels)) or 'none'}")
                problems.append(format_located(doc, (*tkey, "channel"), f"unknown channel '{tier.channel}'", hint))
                continue
            body = _read_template(doc, templates_dir, tier.template, (*tkey, "template"), problems)
            if body is None:
                continue
            html = tier.template.endswith((".html", ".html.j2"))
            for source, key in ((body, "template"), (tier.subject, "subject")):
                if source is None:
                    continue
                for problem in check_template(source, allowed_vars, html=html and key == "template"):
                    problems.append(format_located(doc, (*tkey, key), f"{tier.template if key == 'template' else 'subject'}: {problem}",
                                                   "templates may use: customer fields, features, segment, playbook"))
            tiers.append(TierPlan(
                channel=tier.channel, channel_type=channel.type, consent_channel=channel.consent or tier.channel,
                purpose=channel.purpose, template=tier.template, body=body, subject=tier.subject, html=html,
            ))
        segments.append(SegmentPlan(name=seg.name, rule=rule, rule_text=seg.when, tiers=tuple(tiers)))
    if problems:
        raise PlaybookError(sorted(problems, key=_position_key), doc.path)
    if spec.model == "churn":
        used.add("churn_score")
    return Plan(
        name=spec.name, description=spec.description.strip(), owner=spec.owner, version=str(spec.version),
        source=str(doc.path), model=None if spec.model == "none" else spec.model,
        audience=audience, audience_text=spec.audience, segments=tuple(segments), features=tuple(sorted(used)),
    )


def _read_template(doc: SourceDoc, folder: Path, name: str, key: KeyPath, problems: list[str]) -> str | None:
    path = (folder / name).resolve()
    if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", name) or ".." in Path(name).parts or not path.is_relative_to(folder.resolve()):
        problems.append(format_located(doc, key, f"template '{name}' must be a file inside the playbook's templates/ folder"))
        return None
    if not path.is_file():
        existing = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else []
        close = difflib.get_close_matches(name, existing, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"create {path}"
        shown = Path(folder.name) / name
        problems.append(format_located(doc, key, f"template file not found: {shown} (next to the playbook)", hint))
        return None
    return path.read_text(encoding="utf-8")


def compile_file(path: str | Path, config: ProjectConfig) -> Plan:
    """Load, parse and compile one playbook file; raises PlaybookError listing every problem."""
    doc = load(path)
    spec, problems = _parse(doc)
    if spec is None:
        raise PlaybookError(problems, doc.path)
    return compile_playbook(doc, spec, config, problems)


def _position_key(problem: str) -> tuple[int, int]:
    match = re.match(r"^.*?:(\d+):(\d+): ", problem)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

"""The authored shape of a playbook: what ops write, as pydantic models with unknown keys rejected.

Only shape and simple bounds live here; everything that needs context (features, channels,
templates, the calendar) is checked by the compiler, which reports every problem with its position.
The author's guide (playbooks/README.md) documents every key below with an example.
"""

from __future__ import annotations

import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from infra.yamlsource import KeyPath

NAME_RE = r"^[a-z][a-z0-9_]{0,63}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OfferSpec(_Spec):
    coupon_pool: str = Field(min_length=1, description="the coupon pool codes are drawn from")
    unit_cost: float = Field(ge=0, description="what one coupon costs when redeemed, for the budget")
    currency: str = Field("CNY", min_length=3, max_length=3)
    valid_days: int | None = Field(None, ge=1, le=365)


class VariantSpec(_Spec):
    name: str = Field(pattern=NAME_RE)
    split: float = Field(gt=0, le=100, description="percent of the tier's customers")
    template: str | None = Field(None, description="default: the tier's template")
    subject: str | None = None
    offer: OfferSpec | None = None
    no_offer: bool = Field(False, description="this arm gets no offer even if the tier has one")


class TierSpec(_Spec):
    channel: str
    template: str = Field(description="template file, relative to the playbook's templates/ folder")
    subject: str | None = Field(None, description="email subject line (a template too)")
    offer: OfferSpec | None = None
    capacity: int | None = Field(None, ge=1, description="touches per day on this tier")
    variants: list[VariantSpec] | None = Field(None, min_length=2)


class SegmentSpec(_Spec):
    name: str = Field(pattern=NAME_RE)
    when: str | None = None
    else_: bool = Field(False, alias="else")
    tiers: list[TierSpec] = Field(min_length=1)


class FollowUpSpec(_Spec):
    name: str = Field(pattern=NAME_RE)
    after_days: int = Field(ge=1, le=365)
    when: str | None = Field(None, description="rule at follow-up time; may use orders_since_touch")
    segments: list[str] | None = Field(None, min_length=1, description="default: every segment")
    tiers: list[TierSpec] = Field(min_length=1)


class FrequencyCapSpec(_Spec):
    max: int = Field(ge=1)
    days: int = Field(ge=1, le=365)


class QuietHoursSpec(_Spec):
    start: str
    end: str
    action: Literal["defer", "drop"] = "defer"


class BudgetSpec(_Spec):
    amount: float = Field(gt=0)
    currency: str = Field("CNY", min_length=3, max_length=3)


class GuardrailsSpec(_Spec):
    frequency_cap: FrequencyCapSpec | None = None
    quiet_hours: QuietHoursSpec | None = None
    priority: int = Field(50, ge=0, le=100)
    budget: BudgetSpec | None = None


class ExperimentSpec(_Spec):
    holdout_percent: float = Field(0, ge=0, lt=100)
    salt: str | None = Field(None, description="default: the playbook name; change it to reshuffle")


class GoalSpec(_Spec):
    event: str
    window_days: int = Field(ge=1, le=365)


class ScheduleSpec(_Spec):
    cron: str
    timezone: str


class TriggerSpec(_Spec):
    event: str


class ReentrySpec(_Spec):
    mode: Literal["once", "after", "every_time"] = Field(
        "every_time", description="once: never again; after: `days` after the last entry; every_time: each run")
    days: int | None = Field(None, ge=1, le=3650, description="with mode: after")


class PlaybookSpec(_Spec):
    """The authored shape of a playbook, before anything is resolved."""

    name: str = Field(pattern=NAME_RE)
    description: str = ""
    owner: str | None = None
    version: int | str = 1
    schedule: ScheduleSpec | None = None
    trigger: TriggerSpec | None = None
    model: str = "churn"
    drift_policy: Literal["warn", "stop"] = "warn"
    audience: str | None = None
    segments: list[SegmentSpec] = Field(min_length=1)
    follow_up: list[FollowUpSpec] = Field(default_factory=list)
    reentry: ReentrySpec = ReentrySpec()
    guardrails: GuardrailsSpec = GuardrailsSpec()
    experiment: ExperimentSpec | None = None
    goal: GoalSpec | None = None


def _inner_model(annotation: object) -> type[BaseModel] | None:
    """The model inside `X | None`, `list[X]` and the like (None for plain values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (typing.Union, list):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def allowed_keys(parent: KeyPath) -> list[str]:
    """Keys allowed at `parent` in a playbook (for "did you mean" and "allowed keys here")."""
    model: type[BaseModel] = PlaybookSpec
    for part in parent:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        inner = _inner_model(field.annotation) if field else None
        if inner is None:
            break
        model = inner
    return sorted(f.alias or name for name, f in model.model_fields.items())

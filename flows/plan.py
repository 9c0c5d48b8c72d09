"""The Plan: a compiled playbook, frozen and fully resolved, that round-trips through JSON.

A flow run executes exactly one plan and records its hash, so "what ran" is always answerable.
Pure data: tasks may import this module; it imports nothing from Prefect or the database.
Everything a run needs is here, resolved: template bodies (and the partials they include, import or
extend), offers, capacities, variants with their splits, follow-up steps, guardrails, the experiment,
the goal, the schedule and trigger.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import zoneinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfferPlan(_Frozen):
    """A coupon drawn from a named pool; `unit_cost` is what one redemption costs, for the budget."""

    coupon_pool: str
    unit_cost: float
    currency: str
    valid_days: int | None = None


class VariantPlan(_Frozen):
    """One arm of an A/B test inside a tier: its share of the tier's customers and what it changes."""

    name: str
    split: float  # percent of the tier's customers
    template: str
    body: str
    subject: str | None = None
    html: bool = False
    offer: OfferPlan | None = None


class TierPlan(_Frozen):
    """One touchpoint option: a channel, the consent that governs it, the message, offer and capacity."""

    channel: str
    channel_type: str
    consent_channel: str
    purpose: str
    template: str
    body: str
    subject: str | None = None
    html: bool = False
    offer: OfferPlan | None = None
    capacity: int | None = None  # touches per day on this tier; the rest fall through
    variants: tuple[VariantPlan, ...] = ()

    def arm(self, variant: str | None) -> TierPlan | VariantPlan:
        """What a customer in `variant` gets (the tier itself when it has no variants)."""
        return next((v for v in self.variants if v.name == variant), self)


class SegmentPlan(_Frozen):
    """A segment rule (None for `else`) and its tiers, tried in order."""

    name: str
    rule: dict[str, Any] | None
    rule_text: str | None
    tiers: tuple[TierPlan, ...]


class FollowUpPlan(_Frozen):
    """A later step: `after_days` after the main touch, for customers its rule still selects."""

    name: str
    after_days: int
    rule: dict[str, Any] | None
    rule_text: str | None
    segments: tuple[str, ...]  # the main segments it follows up on
    tiers: tuple[TierPlan, ...]


class FrequencyCap(_Frozen):
    max: int
    days: int


class QuietHours(_Frozen):
    start: str  # HH:MM in the customer's own timezone
    end: str
    action: Literal["defer", "drop"] = "defer"


class Budget(_Frozen):
    amount: float  # per run (one as-of date)
    currency: str


class Guardrails(_Frozen):
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None
    priority: int = 50  # higher runs first, so it takes the frequency-cap slots
    budget: Budget | None = None


class Experiment(_Frozen):
    holdout_percent: float = 0.0
    salt: str


class Goal(_Frozen):
    event: str
    window_days: int


class Schedule(_Frozen):
    cron: str
    timezone: str


class Trigger(_Frozen):
    event: str


class Reentry(_Frozen):
    """When a customer may enter this playbook again: never (`once`), `days` after their last entry, or each run."""

    mode: Literal["once", "after", "every_time"] = "every_time"
    days: int | None = None


class Plan(_Frozen):
    name: str
    description: str
    owner: str | None
    version: str
    source: str
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    model: str | None
    drift_policy: Literal["warn", "stop"] = "warn"
    audience: dict[str, Any] | None
    audience_text: str | None
    segments: tuple[SegmentPlan, ...]
    follow_ups: tuple[FollowUpPlan, ...] = ()
    reentry: Reentry = Reentry()
    guardrails: Guardrails = Guardrails()
    experiment: Experiment | None = None
    goal: Goal | None = None
    features: tuple[str, ...]
    # Template files the tiers' templates load by name (`{% include 'footer.txt.j2' %}`): name -> text.
    # Left out of the JSON when empty, so plans without partials keep their JSON and hash.
    partials: dict[str, str] = {}

    @model_serializer(mode="wrap")
    def _without_empty_partials(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("partials"):
            data.pop("partials", None)
        return data

    def to_json(self, *, indent: int | None = None) -> str:
        """Canonical JSON: sorted keys, fixed separators, so equal plans serialise (and hash) equally."""
        separators = (",", ": ") if indent else (",", ":")
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=separators,
                          indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)

    @property
    def plan_hash(self) -> str:
        """Hash of the content, not of where the file lies: a copied playbook keeps its hash."""
        content = self.model_dump(mode="json", exclude={"source"})
        return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def local_day(self, at: datetime.datetime) -> datetime.date:
        """The day an (aware) instant falls on in the schedule's timezone, else UTC: a run's as-of day."""
        tz = zoneinfo.ZoneInfo(self.schedule.timezone) if self.schedule else datetime.UTC
        return at.astimezone(tz).date()

    @property
    def channels(self) -> list[str]:
        return sorted({t.channel for s in self.segments for t in s.tiers})

    def tier(self, segment: str, index: int) -> TierPlan:
        return next(s for s in self.segments if s.name == segment).tiers[index]

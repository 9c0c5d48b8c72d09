"""The Plan: a compiled playbook, frozen and fully resolved, that round-trips through JSON.

A flow run executes exactly one plan and records its hash, so "what ran" is always answerable.
Pure data: tasks may import this module; it imports nothing from Prefect or the database.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierPlan(_Frozen):
    """One touchpoint option: a channel, the consent that governs it, and the message to send."""

    channel: str
    channel_type: str
    consent_channel: str
    purpose: str
    template: str
    body: str
    subject: str | None = None
    html: bool = False


class SegmentPlan(_Frozen):
    """A segment rule (None for `else`) and its tiers, tried in order."""

    name: str
    rule: dict[str, Any] | None
    rule_text: str | None
    tiers: tuple[TierPlan, ...]


class Plan(_Frozen):
    name: str
    description: str
    owner: str | None
    version: str
    source: str
    model: str | None
    audience: dict[str, Any] | None
    audience_text: str | None
    segments: tuple[SegmentPlan, ...]
    features: tuple[str, ...]

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace variance, so equal plans hash equally."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)

    @property
    def plan_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @property
    def channels(self) -> list[str]:
        return sorted({t.channel for s in self.segments for t in s.tiers})

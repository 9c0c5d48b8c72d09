"""Settings: where the warehouse, the project config and the outbox are, resolved from flags and env.

Precedence for every setting: command-line flag > environment variable > lifecycle.yaml > default.

    LIFECYCLE_HOME     state folder (default ~/.lifecycle): warehouse.db, outbox/, reports
    LIFECYCLE_DB_URL   any SQLAlchemy URL (default sqlite:///$LIFECYCLE_HOME/warehouse.db)
    LIFECYCLE_CONFIG   project config file (default ./lifecycle.yaml, else the built-in default)
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.errors import ConfigError
from infra.yamlsource import SourceDoc, format_located, load_yaml, validation_problems

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_PLAYBOOKS = REPO_ROOT / "playbooks"
CONFIG_NAME = "lifecycle.yaml"

ChannelType = Literal["outbox", "email", "webhook", "wecom"]
IMPLEMENTED_CHANNEL_TYPES = {"outbox", "webhook", "email", "wecom"}
# Keys a channel type needs; the rest of ChannelConfig is optional or belongs to another type.
REQUIRED_KEYS = {"outbox": (), "webhook": ("url",), "email": ("host", "from_address"),
                 "wecom": ("corp_id", "secret")}
TYPE_KEYS = {
    "outbox": ("path", "table"),
    "webhook": ("url", "headers", "timeout_seconds", "max_attempts", "backoff_seconds", "backoff_max_seconds",
                "rate_per_second", "concurrency"),
    "email": ("host", "port", "username", "password", "from_address", "starttls", "tls_ca_file", "timeout_seconds",
              "max_attempts", "backoff_seconds", "backoff_max_seconds", "rate_per_second"),
    "wecom": ("base_url", "corp_id", "secret", "timeout_seconds", "max_attempts", "backoff_seconds",
              "backoff_max_seconds", "rate_per_second", "concurrency"),
}

# The consent vocabulary: the channels a customer can grant or withdraw consent for (the warehouse's
# `consents.channel`). A delivery channel governed by anything else can never reach anyone.
CONSENT_CHANNELS = ("sms", "email", "push", "wecom")
# Event types a trigger or a conversion goal may name: what the warehouse records, plus orders.
EVENT_TYPES = ("order.placed", "app.visit", "product.view", "message.open", "message.click", "group.message")
# Models a playbook may score with (trained by `lifecycle model train`, kept in the model registry).
MODELS = ("churn",)


def lifecycle_home() -> Path:
    """The state folder; created on first use."""
    home = Path(os.environ.get("LIFECYCLE_HOME") or Path.home() / ".lifecycle").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_db_url() -> str:
    return f"sqlite:///{lifecycle_home() / 'warehouse.db'}"


class ChannelConfig(BaseModel):
    """One delivery channel. `consent` names the consent channel that governs it (default: its name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ChannelType
    consent: str | None = None
    purpose: str = "marketing"
    # outbox: a JSON-lines file (default $LIFECYCLE_HOME/outbox/<channel>.jsonl) or the warehouse's
    # `outbox` table when `table: true`.
    path: str | None = None
    table: bool = False
    # webhook: POST JSON to `url` with an Idempotency-Key header; `headers` e.g. {Authorization: "Bearer ${TOKEN}"}.
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # email: SMTP with STARTTLS and login; the password as ${ENV_VAR}.
    host: str | None = None
    port: int = 587
    username: str | None = None
    password: str | None = None
    from_address: str | None = None
    starttls: bool = True
    tls_ca_file: str | None = None  # a private CA for the relay's certificate (default: the system's)
    # wecom: enterprise WeChat, sent to external contacts by their assigned advisor; the secret as ${ENV_VAR}.
    base_url: str = "https://qyapi.weixin.qq.com"
    corp_id: str | None = None
    secret: str | None = None
    # Provider behaviour (webhook, email, wecom): timeouts, retries with exponential backoff + jitter, throttling.
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_seconds: float = Field(default=0.5, ge=0)
    backoff_max_seconds: float = Field(default=30.0, ge=0)
    rate_per_second: float | None = Field(default=None, gt=0)
    concurrency: int = Field(default=8, ge=1)
    # What one delivered message costs (SMS fee, advisor time, ...), in the offers' currency: for ROI.
    cost_per_message: float = Field(default=0.0, ge=0)


class ControlGroup(BaseModel):
    """A global control group: `percent` of all customers, by a hash of (customer, salt), get no marketing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    percent: float = Field(ge=0, le=50)
    salt: str = Field(min_length=1)


DASK_ADDRESS = re.compile(r"^((tcp|tls|ucx|ws|wss)://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")


class DaskConfig(BaseModel):
    """Where the shards run: a running Dask scheduler (`address`), else a temporary local cluster of
    `workers` processes started for the run and stopped after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None  # tcp://host:8786; its workers need LIFECYCLE_DB_URL and this code installed
    workers: int = Field(default=2, ge=1, le=256)  # local cluster only: one single-threaded process each

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not DASK_ADDRESS.match(value):
            raise ValueError("not a Dask scheduler address (write tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786)")
        return value

    @model_validator(mode="after")
    def _workers_only_for_a_local_cluster(self) -> DaskConfig:
        if self.address is not None and "workers" in self.model_fields_set:
            raise ValueError("`workers` applies only to the local cluster: a scheduler at `address` has the "
                             "workers started with `dask worker`; remove one of the two")
        return self


class ExecutionConfig(BaseModel):
    """How a playbook run is partitioned: `shards` > 1 runs extract, features, score and dispatch per
    shard of customers (balanced customer-id ranges) on Dask; 1 (the default) runs it all in one process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: int = Field(default=1, ge=1, le=1024)
    dask: DaskConfig = Field(default_factory=DaskConfig)


class ProjectConfig(BaseModel):
    """lifecycle.yaml: logical names (channels, warehouse) resolved to real places; no secrets inline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warehouse: str | None = None
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    control_group: ControlGroup | None = None  # held out of every marketing playbook, to measure them all
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)  # one process, or shards on Dask
    source: str = "built-in default"

    def channel(self, name: str) -> ChannelConfig:
        return self.channels[name]


DEFAULT_CHANNELS = {
    "advisor": {"type": "outbox", "consent": "wecom", "cost_per_message": 5.0},
    "sms": {"type": "outbox", "cost_per_message": 0.05},
    "push": {"type": "outbox"},
    "email": {"type": "outbox", "cost_per_message": 0.001},
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, doc: SourceDoc, path: tuple) -> Any:
    """Replace ${VAR} in strings from the environment; a missing variable is a config error."""
    if isinstance(value, dict):
        return {k: _expand_env(v, doc, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, doc, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise _located(doc, path, f"environment variable {name} is not set",
                               f"export {name}=... before running, or remove the reference", "L202")
            return os.environ[name]
        return _ENV_REF.sub(sub, value)
    return value


def find_config_path(explicit: str | None) -> Path | None:
    """--config, else LIFECYCLE_CONFIG, else ./lifecycle.yaml, else the repo's lifecycle.yaml."""
    chosen = explicit or os.environ.get("LIFECYCLE_CONFIG")
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}",
                              hint="pass an existing file to --config, or unset LIFECYCLE_CONFIG", code="L201")
        return path
    for candidate in (Path.cwd() / CONFIG_NAME, REPO_ROOT / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | None = None) -> ProjectConfig:
    """Load and validate the project config; every problem points at file:line:col."""
    path = find_config_path(explicit)
    if path is None:
        return ProjectConfig(channels={k: ChannelConfig(**v) for k, v in DEFAULT_CHANNELS.items()})
    doc = load_yaml(path, kind="config file")
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise _located(doc, (), "the config must be a mapping of settings", "start with `channels:`", "L203")
    if doc.problems:
        raise ConfigError(f"{len(doc.problems)} problem(s) in {path}", code="L204", problems=doc.problems)
    data = _expand_env(data, doc, ())
    try:
        config = ProjectConfig(**data, source=str(path))
    except ValidationError as exc:
        problems = validation_problems(doc, exc, _allowed_keys, dict.fromkeys(("unknown", "missing", "value", "name"), "L204"))
        raise ConfigError(f"{len(problems)} problem(s) in {path}", code="L204", problems=problems) from None
    problems = []
    for name, channel in config.channels.items():
        if channel.type not in IMPLEMENTED_CHANNEL_TYPES:
            raise _located(doc, ("channels", name, "type"), f"channel type '{channel.type}' is not available in this version",
                           f"use one of: {', '.join(sorted(IMPLEMENTED_CHANNEL_TYPES))}", "L205")
        given = data["channels"][name] if isinstance(data.get("channels", {}).get(name), dict) else {}
        for key in REQUIRED_KEYS[channel.type]:
            if getattr(channel, key) is None:
                problems.append(format_located(doc, ("channels", name), f"a {channel.type} channel needs `{key}`",
                                               f"add `{key}: ...` under channels.{name}", code="L204"))
        others = {k for t, keys in TYPE_KEYS.items() if t != channel.type for k in keys} - set(TYPE_KEYS[channel.type])
        for key in sorted(others & set(given)):
            problems.append(format_located(doc, ("channels", name, key), f"`{key}` does not apply to a {channel.type} channel",
                                           f"{channel.type} channels take: {', '.join(TYPE_KEYS[channel.type])}", code="L204"))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {path}", code="L204", problems=problems)
    return config


def _located(doc: SourceDoc, path: tuple, message: str, hint: str, code: str) -> ConfigError:
    return ConfigError(message, code=code, problems=[format_located(doc, path, message, hint, code=code)])


def _allowed_keys(parent: tuple) -> list[str]:
    if len(parent) == 2 and parent[0] == "channels":
        return sorted(ChannelConfig.model_fields)
    if parent == ("control_group",):
        return sorted(ControlGroup.model_fields)
    if parent == ("execution",):
        return sorted(ExecutionConfig.model_fields)
    if parent == ("execution", "dask"):
        return sorted(DaskConfig.model_fields)
    return sorted(k for k in ProjectConfig.model_fields if k != "source")


def resolve_db_url(flag: str | None, config: ProjectConfig | None = None) -> str:
    """--db, else LIFECYCLE_DB_URL, else the config's `warehouse`, else the SQLite file in LIFECYCLE_HOME."""
    return flag or os.environ.get("LIFECYCLE_DB_URL") or (config.warehouse if config else None) or default_db_url()


def outbox_dir() -> Path:
    path = lifecycle_home() / "outbox"
    path.mkdir(parents=True, exist_ok=True)
    return path

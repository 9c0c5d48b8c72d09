"""Settings: where the warehouse, the project config and the outbox are, resolved from flags and env.

Precedence for every setting: command-line flag > environment variable > lifecycle.yaml > default.

    LIFECYCLE_HOME     state folder (default ~/.lifecycle): warehouse.db, outbox/, reports
    LIFECYCLE_DB_URL   any SQLAlchemy URL (default sqlite:///$LIFECYCLE_HOME/warehouse.db)
    LIFECYCLE_CONFIG   project config file (default ./lifecycle.yaml, else the built-in default)
"""

from __future__ import annotations

import difflib
import os
import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.errors import ConfigError
from infra.redact import mask_secrets_in, mask_url, strip_controls
from infra.yamlsource import SourceDoc, format_located, load_yaml, position_key, validation_problems

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


# Bounds on the provider settings: wide enough for any real provider, narrow enough that a typo
# (`timeout_seconds: 1e9`, `.inf`, `concurrency: 100000`) cannot hang a run or open a flood of sockets.
MAX_WAIT_SECONDS = 600.0  # a reply, a backoff: ten minutes is already longer than any provider needs
MAX_ATTEMPTS = 20
MAX_CONCURRENCY = 256
MAX_RATE_PER_SECOND = 10_000.0
MAX_MESSAGE_CHARS = 65_536  # what rendering allows any message (tasks/sandbox.py; a test keeps the two equal)
CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # also the outbox file's name: no '/', '..' or spaces


class ChannelConfig(BaseModel):
    """One delivery channel. `consent` names the consent channel that governs it (default: its name).

    Numbers are finite and bounded (YAML's `.inf` and `.nan` are refused): see MAX_WAIT_SECONDS and
    the limits next to it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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
    port: int = Field(default=587, ge=1, le=65535)
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
    timeout_seconds: float = Field(default=10.0, gt=0, le=MAX_WAIT_SECONDS)
    max_attempts: int = Field(default=5, ge=1, le=MAX_ATTEMPTS)
    backoff_seconds: float = Field(default=0.5, ge=0, le=MAX_WAIT_SECONDS)
    backoff_max_seconds: float = Field(default=30.0, ge=0, le=MAX_WAIT_SECONDS)
    rate_per_second: float | None = Field(default=None, gt=0, le=MAX_RATE_PER_SECOND)
    concurrency: int = Field(default=8, ge=1, le=MAX_CONCURRENCY)
    # What one delivered message costs (SMS fee, advisor time, ...), in the offers' currency: for ROI.
    cost_per_message: float = Field(default=0.0, ge=0)
    # The longest message this channel takes, in characters (an SMS gateway's, a push provider's); a longer
    # one is that touch's failure (`too_long`). Every message is held to 65,536 characters anyway.
    max_message_chars: int | None = Field(default=None, ge=1, le=MAX_MESSAGE_CHARS)


class ControlGroup(BaseModel):
    """A global control group: `percent` of all customers, by a hash of (customer, salt), get no marketing."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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


class Defaults(BaseModel):
    """What lifecycle assumes where a playbook or the data says nothing: `timezone`, the zone of customers
    imported without one (instead of UTC), so quiet hours and send times are judged where they live;
    `currency`, the project's money."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str | None = None
    # The project's money: what cost_per_message is in, and the currency of the figures of a playbook
    # without offers or budget (one with them shows theirs). CNY, as offers default to.
    currency: str = Field(default="CNY", min_length=3, max_length=3)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        """load_config reports a bad name at its line first (with a near match); this guards configs built in code."""
        if value is not None and not known_zone(value):
            raise ValueError("not a timezone zoneinfo knows")
        return value


def known_zone(name: str) -> bool:
    """Whether zoneinfo loads this name (it raises more than ZoneInfoNotFoundError for bad ones:
    ValueError for paths, IsADirectoryError for 'America', OSError for very long names)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return bool(name)


class ProjectConfig(BaseModel):
    """lifecycle.yaml: logical names (channels, warehouse) resolved to real places; no secrets inline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warehouse: str | None = None
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    control_group: ControlGroup | None = None  # held out of every marketing playbook, to measure them all
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)  # one process, or shards on Dask
    defaults: Defaults = Field(default_factory=Defaults)  # for data that lacks a value (a customer's timezone)
    source: str = "built-in default"

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, channels: dict[str, ChannelConfig]) -> dict[str, ChannelConfig]:
        """A channel's name becomes a file name (its outbox): never a path. load_config reports bad
        names at their line first; this guards configs built in code."""
        bad = sorted(name for name in channels if not CHANNEL_NAME.match(name))
        if bad:
            raise ValueError(f"not valid channel names: {', '.join(repr(b) for b in bad)}")
        return channels

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


def load_config(explicit: str | None = None, *, warnings: list[str] | None = None) -> ProjectConfig:
    """Load and validate the project config; every problem points at file:line:col.

    With a `warnings` list, what is wrong without stopping a run is appended to it, located like the
    errors: secrets written into the file instead of as ${ENV_VAR} (`lifecycle check` prints them).
    """
    path = find_config_path(explicit)
    if path is None:
        return ProjectConfig(channels={k: ChannelConfig(**v) for k, v in DEFAULT_CHANNELS.items()})
    doc = load_yaml(path, kind="config file")
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise _located(doc, (), "the config must be a mapping of settings", "start with `channels:`", "L203")
    if doc.problems:
        raise ConfigError(f"{len(doc.problems)} problem(s) in {path}", code="L204", problems=doc.problems)
    if warnings is not None:
        warnings += inline_secrets(doc)
    data = _expand_env(data, doc, ())
    zones = _zone_problems(doc, data)
    problems = _name_problems(doc, data) + _channel_problems(doc, data) + zones
    if zones:  # reported at its line, with a near match: not again by the schema
        data = {**data, "defaults": {k: v for k, v in data["defaults"].items() if k != "timezone"}}
    if "source" in data:  # set by lifecycle, not a setting: an unknown key like any other
        problems.append(format_located(doc, ("source",), "unknown key 'source'",
                                       f"allowed keys here: {', '.join(_allowed_keys(()))}", code="L204"))
        data = {k: v for k, v in data.items() if k != "source"}
    if problems and isinstance(data.get("channels"), dict):  # a bad name is reported once, at its line
        data = {**data, "channels": {k: v for k, v in data["channels"].items()
                                     if isinstance(k, str) and CHANNEL_NAME.match(k)}}
    try:
        config = ProjectConfig(**data, source=str(path))
    except ValidationError as exc:
        problems += validation_problems(doc, exc, _allowed_keys, dict.fromkeys(("unknown", "missing", "value", "name"), "L204"),
                                        hints=_HINTS)
        raise _config_error(path, problems) from None
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
        raise _config_error(path, problems)
    return config


# What to write instead, for a value out of its bounds (keyed by the setting's name).
_HINTS = {
    "timeout_seconds": f"seconds to wait for one provider reply: more than 0, at most {MAX_WAIT_SECONDS:g} (default 10)",
    "backoff_seconds": f"the first retry's wait in seconds: 0 to {MAX_WAIT_SECONDS:g} (default 0.5)",
    "backoff_max_seconds": f"the longest wait between retries in seconds: 0 to {MAX_WAIT_SECONDS:g} (default 30)",
    "max_attempts": f"tries per message, the first included: 1 to {MAX_ATTEMPTS} (default 5)",
    "concurrency": f"provider calls in flight at once: 1 to {MAX_CONCURRENCY} (default 8)",
    "rate_per_second": f"calls per second: more than 0, at most {MAX_RATE_PER_SECOND:,.0f}; omit it for no limit",
    "cost_per_message": "what one delivered message costs, in the offers' currency: a finite number, 0 or more",
    "port": "a TCP port, 1 to 65535 (587 for SMTP with STARTTLS, 465 for SMTP over TLS)",
    "max_message_chars": f"the longest message the channel takes, in characters: 1 to {MAX_MESSAGE_CHARS:,}; "
                         "omit it for no limit of its own",
    "percent": "the share of customers held out, 0 to 50",
    "timezone": "an IANA timezone name such as Asia/Shanghai or Europe/Berlin: customers imported without a "
                "timezone get it",
    "currency": "a three-letter currency code, e.g. CNY (the default), EUR or USD",
}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


# Settings whose value is a credential, and headers that carry one.
_SECRET_KEY = re.compile(r"(?i)^(.*[_-])?(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
                         r"private[_-]?key|client[_-]?secret|corpsecret|credentials?)$")
_SECRET_HEADER = re.compile(r"(?i)^(authorization|proxy-authorization|cookie|x-[a-z0-9-]*(token|key|secret|auth)[a-z0-9-]*)$")
_SECRET_HINT = ("put it in an environment variable and write `${NAME}` here (e.g. `password: ${SMTP_PASSWORD}`, "
                "`Authorization: Bearer ${WEBHOOK_TOKEN}`): lifecycle.yaml is shared and committed, secrets in it "
                "leak with it")


def inline_secrets(doc: SourceDoc) -> list[str]:
    """Warnings (L218) for credentials written into the config as text instead of `${ENV_VAR}`.

    Looks at the file as written (before ${VAR} are expanded): settings named like a secret, headers
    that authorise, and anything else with a credential inside (`https://user:pw@...`, `?token=...`,
    `Bearer ...`). A value made only of ${VAR} references is what it should be.
    """
    found: list[str] = []

    def walk(value: Any, path: tuple) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, (*path, i))
        elif isinstance(value, str) and path:
            literal = _ENV_REF.sub("", value)  # what is written as text, ${VAR} references left out
            if not literal.strip():
                return
            key, in_headers = str(path[-1]), len(path) >= 2 and path[-2] == "headers"
            if in_headers and _SECRET_HEADER.match(key) and "${" not in value:
                message = f"header `{key}` carries a credential written in the file"
            elif not in_headers and _SECRET_KEY.match(key) and "${" not in value:
                message = f"`{key}` is written in the file as text"
            elif mask_secrets_in(literal, same_width=True) != literal:
                message = "a credential is written in the file inside this value (in a URL, or as a token)"
            else:
                return
            found.append(format_located(doc, path, message, _SECRET_HINT, code="L218", severity="warning",
                                        at=doc.positions.get(path)))  # the value: what to replace

    walk(doc.data, ())
    return found


def _name_problems(doc: SourceDoc, data: dict[str, Any]) -> list[str]:
    """Channel names are identifiers: they name outbox files and appear in paths, tags and the ledger."""
    channels = data.get("channels")
    if not isinstance(channels, dict):
        return []
    return [format_located(doc, ("channels", name), f"'{strip_controls(str(name), keep='')}' is not a valid channel name",
                           "use lower-case letters, digits and underscores, starting with a letter (at most 64), "
                           "e.g. `sms` or `wecom_vip`: the name is also the outbox file's name", code="L215")
            for name in channels if not (isinstance(name, str) and CHANNEL_NAME.match(name))]


def _channel_problems(doc: SourceDoc, data: dict[str, Any]) -> list[str]:
    """Before the schema: channel URLs are http(s) with a host, headers are what HTTP can carry.

    Checked on the raw data, so they are reported with the schema's problems rather than after them.
    """
    problems = []
    channels = data.get("channels")
    for name, raw in (channels.items() if isinstance(channels, dict) else ()):
        if not isinstance(raw, dict):
            continue
        for key in ("url", "base_url"):
            value = raw.get(key)
            if not isinstance(value, str) or raw.get("type") not in ("webhook", "wecom"):
                continue
            wrong = _url_problem(value)
            if wrong:
                problems.append(format_located(
                    doc, ("channels", name, key), f"`{key}` must be an http:// or https:// URL with a host: {wrong}, "
                    f"got '{mask_url(value)}'", "write e.g. https://hooks.example.com/lifecycle; keep credentials "
                    "out of it (a header with ${TOKEN} instead)", code="L216"))
        headers = raw.get("headers")
        for header, value in (headers.items() if isinstance(headers, dict) else ()):
            if not isinstance(header, str) or not isinstance(value, str):
                continue  # the schema says what is wrong
            if not _HEADER_NAME.match(header) or not value.isascii() or strip_controls(value, keep="\t") != value:
                problems.append(format_located(
                    doc, ("channels", name, "headers", header), f"header '{strip_controls(header, keep='')}' cannot "
                    "be sent: its name must be letters, digits and -, its value one line of ASCII text without "
                    "control characters", "write one `Name: value` per header, e.g. `Authorization: Bearer ${TOKEN}`",
                    code="L217"))
    return problems


def _zone_problems(doc: SourceDoc, data: dict[str, Any]) -> list[str]:
    """`defaults.timezone` is a zone zoneinfo knows, with a near match when it is not."""
    defaults = data.get("defaults")
    value = defaults.get("timezone") if isinstance(defaults, dict) else None
    if not isinstance(value, str) or known_zone(value):
        return []
    close = difflib.get_close_matches(value, sorted(zoneinfo.available_timezones()), n=1, cutoff=0.6)
    return [format_located(doc, ("defaults", "timezone"), f"'{strip_controls(value, keep='')}' is not a timezone "
                           "zoneinfo knows", (f"did you mean '{close[0]}'? " + _HINTS["timezone"][0].upper() + _HINTS["timezone"][1:])
                           if close else _HINTS["timezone"],
                           code="L204", at=doc.positions.get(("defaults", "timezone")))]


def _url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL with a host, or None."""
    if strip_controls(url, keep="") != url or any(ch.isspace() for ch in url):
        return "it contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        return f"it cannot be read ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"the scheme is '{parts.scheme}'" if parts.scheme else "there is no scheme"
    if not parts.hostname:
        return "there is no host"
    return None


def _config_error(path: Path, problems: list[str]) -> ConfigError:
    """One error for every problem in the file, top to bottom; its code is the first problem's."""
    problems = sorted(problems, key=position_key)
    first = re.search(r"error\[(L\d+)\]", problems[0]) if problems else None
    return ConfigError(f"{len(problems)} problem(s) in {path}", code=first.group(1) if first else "L204",
                       problems=problems)


def _located(doc: SourceDoc, path: tuple, message: str, hint: str, code: str) -> ConfigError:
    return ConfigError(message, code=code, problems=[format_located(doc, path, message, hint, code=code)])


def _allowed_keys(parent: tuple) -> list[str]:
    if len(parent) == 2 and parent[0] == "channels":
        return sorted(ChannelConfig.model_fields)
    if parent == ("control_group",):
        return sorted(ControlGroup.model_fields)
    if parent == ("defaults",):
        return sorted(Defaults.model_fields)
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

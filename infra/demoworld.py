"""A realistic demo world: customers who buy, engage, consent and lapse, generated fast and reproducibly.

Buying follows buy-till-you-die (Pareto/NBD): each customer orders as a Poisson process at a
Gamma-distributed rate until an exponential lifetime with a Gamma-distributed dropout rate ends.
Engagement (visits, views, message opens and clicks, group chat) runs at a rate tied to the purchase
rate and ramps down over the last weeks of a customer's life, so the churn signal the product looks
for (interaction frequency dropping 30%+ before a customer lapses) is really there to be found.

Everything is vectorised numpy drawn from one `default_rng(seed)`: the same arguments give identical
frames, and 100k customers take seconds. Worlds are drawn in chunks of customers (`iter_world`), so
a million customers stream into the warehouse (`load_world`, one transaction) in bounded memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from infra.errors import UsageError, WarehouseError
from infra.warehouse import schema
from infra.warehouse.bulk import bulk_insert, without_indexes
from infra.warehouse.db import display_url, upgrade

DAY = 86_400  # seconds
# Customers per generated chunk: memory follows the chunk (about 0.5 GB), not the world.
CHUNK_CUSTOMERS = 100_000
_TABLES = ("customers", "orders", "events", "consents")

# Buying: rates are per day. Mean 1/50 ≈ one order every 1.6 months among buyers; shape < 2 makes
# a long tail of heavy buyers. Mean lifetime 1/DROP_MEAN = 250 days, also heterogeneous.
NEVER_BUY_SHARE = 0.15
RATE_SHAPE, RATE_MEAN = 1.5, 1 / 50
DROP_SHAPE, DROP_MEAN = 1.2, 1 / 250
# Regularity: a third buy at Poisson-random times (BG/NBD's assumption); the rest keep a rhythm
# (Gamma-distributed gaps with shape 1-6, mean 3), as replenishment shoppers do in real data.
POISSON_SHARE = 0.35
WELCOME_SHARE, WELCOME_DAYS = 0.45, 4.0  # many first orders follow sign-up within days
SIGNUP_GROWTH = 0.6  # sign-up density grows like t**0.6 over the window

# Engagement: events per day while alive = (floor + per-order * purchase rate) * propensity.
ENGAGE_FLOOR, ENGAGE_PER_ORDER_RATE = 0.09, 6.0
RAMP_DAYS, RAMP_LOW, AFTER_DEATH = 60.0, 0.35, 0.03
EVENT_SEASON_WEIGHT = 0.4  # promotions move visits less than they move orders

TIERS = ("bronze", "silver", "gold", "diamond")
TIER_SPEND_365D = (800.0, 2_500.0, 6_000.0)  # trailing-year spend to reach silver / gold / diamond

CATEGORIES = ("apparel", "shoes", "beauty", "sports", "home", "food", "accessories")
CATEGORY_WEIGHTS = (0.27, 0.13, 0.18, 0.12, 0.10, 0.13, 0.07)
CATEGORY_PRICE = (1.0, 1.6, 0.8, 1.2, 1.1, 0.35, 0.9)
ORDER_CHANNELS = ("store", "app", "miniprogram", "web")
ORDER_CHANNEL_WEIGHTS = (0.25, 0.30, 0.35, 0.10)

TIMEZONES = (
    "Asia/Shanghai", "Asia/Hong_Kong", "Asia/Taipei", "Asia/Singapore", "Asia/Tokyo",
    "Europe/London", "Europe/Paris", "America/Los_Angeles", "America/New_York", "Australia/Sydney",
)
TIMEZONE_WEIGHTS = (0.80, 0.05, 0.02, 0.03, 0.02, 0.02, 0.01, 0.02, 0.02, 0.01)
_WESTERN_FROM = 5  # TIMEZONES[5:] draw first names from the western list
NAMES_CN = ("Wei", "Fang", "Jing", "Li", "Min", "Jun", "Lei", "Yan", "Hui", "Xin", "Ying", "Hao",
            "Chen", "Yu", "Mei", "Lin", "Tao", "Qiang", "Na", "Jie", "Xiaoming", "Yiting")
NAMES_WEST = ("Emma", "Oliver", "Chloe", "James", "Grace", "Ethan", "Sophie", "Liam", "Mia", "Noah")
N_ADVISORS, ADVISOR_SHARE = 50, 0.6

CONSENT_CHANNELS = ("sms", "email", "push", "wecom")
# (purpose, channel) -> (share of eligible customers granting, share of grants withdrawn later)
CONSENT_RATES = {
    ("marketing", "sms"): (0.70, 0.08), ("marketing", "email"): (0.60, 0.08),
    ("marketing", "push"): (0.50, 0.07), ("marketing", "wecom"): (0.85, 0.05),
    ("service", "sms"): (0.35, 0.02), ("service", "email"): (0.25, 0.02),
}

EVENT_TYPES = ("app.visit", "product.view", "message.open", "message.click", "group.message")
EVENT_TYPE_WEIGHTS = (0.36, 0.30, 0.18, 0.08, 0.08)
# SMS opens cannot be tracked, so opens come from push / wecom / email and clicks from all four.
OPEN_CHANNEL_WEIGHTS = (0.0, 0.25, 0.45, 0.30)  # in CONSENT_CHANNELS order
CLICK_CHANNEL_WEIGHTS = (0.20, 0.20, 0.35, 0.25)

# Local hour-of-day profile: lunch and evening peaks, quiet nights.
HOUR_WEIGHTS = np.array([1, .5, .3, .2, .2, .3, .8, 1.5, 2.5, 3, 3.5, 4,
                         5, 4.5, 3.5, 3.5, 3.8, 4, 4.5, 6, 7, 7.5, 5.5, 3], dtype=float)

# Chinese New Year moves every year; outside this table we fall back to early February.
CNY = {2016: "02-08", 2017: "01-28", 2018: "02-16", 2019: "02-05", 2020: "01-25", 2021: "02-12",
       2022: "02-01", 2023: "01-22", 2024: "02-10", 2025: "01-29", 2026: "02-17", 2027: "02-06",
       2028: "01-26", 2029: "02-13", 2030: "02-03", 2031: "01-23", 2032: "02-11", 2033: "01-31",
       2034: "02-19", 2035: "02-08"}


@dataclass
class World:
    """The four data tables as frames, columns named as in the warehouse.

    events and consents carry no event_id / consent_id: the warehouse assigns them, which keeps
    PostgreSQL's sequences right for later inserts.
    """

    customers: pd.DataFrame
    orders: pd.DataFrame
    events: pd.DataFrame
    consents: pd.DataFrame


def generate_world(n_customers: int, *, days: int = 730, seed: int = 0, end: dt.date,
                   chunk_customers: int = CHUNK_CUSTOMERS) -> World:
    """Customers signed up in the `days` before `end`, with activity up to the end of `end` (UTC).

    The whole world in memory: `iter_world`'s chunks joined. For worlds too big for that, stream
    `iter_world` into `load_world` (what `lifecycle data generate` does).
    """
    parts = list(iter_world(n_customers, days=days, seed=seed, end=end, chunk_customers=chunk_customers))
    if len(parts) == 1:
        return parts[0]
    return World(*(pd.concat([getattr(p, name) for p in parts], ignore_index=True) for name in _TABLES))


def iter_world(n_customers: int, *, days: int = 730, seed: int = 0, end: dt.date,
               chunk_customers: int = CHUNK_CUSTOMERS) -> Iterator[World]:
    """The world `generate_world` returns, as consecutive chunks of at most `chunk_customers` customers.

    Who the customers are (sign-up, timezone, buying rate, lifetime, spend) is drawn for everyone
    first, so ids follow sign-up order across chunks; each chunk then draws its customers' orders,
    consents and events, with the main generator for the first chunk and one seeded by (seed, chunk)
    for each later one. A world that fits in one chunk is drawn exactly as it always was, and memory
    grows with the chunk, not the world.
    """
    if n_customers < 1 or days < 1:
        raise UsageError(f"cannot generate {n_customers} customers over {days} days",
                         hint="ask for at least 1 customer and 1 day, e.g. --customers 10000")
    rng = np.random.default_rng(seed)
    n = n_customers
    origin = np.datetime64(end - dt.timedelta(days=days), "D")
    horizon = float(days + 1)  # activity runs to the end of `end`; sign-ups stop at its start
    season = _seasonality(origin, days + 1)
    clock = _Clock(rng, _utc_offsets(origin, days + 2), horizon)

    tz = rng.choice(len(TIMEZONES), n, p=TIMEZONE_WEIGHTS)
    signup = clock.local_time(tz, days * rng.random(n) ** (1 / (1 + SIGNUP_GROWTH)))
    signup = np.clip(signup, 0, days - 1 / DAY)
    by_signup = np.argsort(signup, kind="stable")  # so C0000001 is the first to sign up
    signup, tz = signup[by_signup], tz[by_signup]
    buyer = rng.random(n) >= NEVER_BUY_SHARE
    people = _People(
        signup=signup,
        rate=rng.gamma(RATE_SHAPE, RATE_MEAN / RATE_SHAPE, n) * buyer,
        regularity=np.where(rng.random(n) < POISSON_SHARE, 1.0, 1.0 + rng.gamma(2.0, 1.0, n)),
        death=signup + rng.exponential(1.0, n) / rng.gamma(DROP_SHAPE, DROP_MEAN / DROP_SHAPE, n),
        spend=rng.lognormal(np.log(220.0), 0.55, n),
        buyer=buyer,
    )
    step = max(1, chunk_customers)
    orders_before = 0
    for k, start in enumerate(range(0, n, step)):
        part = slice(start, min(n, start + step))
        clock.rng = rng if k == 0 else np.random.default_rng([seed, k])
        clock.tz = tz[part]
        world = _chunk(clock, season, people.part(part), origin=origin, end=end, first=start + 1, total=n,
                       first_order=orders_before + 1)
        orders_before += len(world.orders)
        yield world


def _chunk(clock: _Clock, season: np.ndarray, people: _People, *, origin: np.datetime64, end: dt.date,
           first: int, total: int, first_order: int) -> World:
    """Orders, consents, events and the customer rows of customers `first`.. (numbered among `total`)."""
    rng, tz, horizon, n = clock.rng, clock.tz, clock.horizon, people.signup.size
    ids = _numbered("C", n, 7, first=first, total=total)
    orders = _orders(rng, clock, season, people)
    has_phone, has_email = rng.random(n) >= 0.04, rng.random(n) >= 0.06
    advisor = np.where(rng.random(n) < ADVISOR_SHARE, rng.integers(1, N_ADVISORS + 1, n), 0)
    consents, granted, withdrawn = _consents(rng, people, has_phone, has_email, advisor > 0, horizon)
    events = _events(rng, clock, season, people, advisor > 0, granted, withdrawn)

    spend_total = np.bincount(orders["owner"], orders["amount"], minlength=n)
    recent = orders["time"] >= horizon - 365
    spend_year = np.bincount(orders["owner"][recent], orders["amount"][recent], minlength=n)
    # 1 point per unit spent, part of it redeemed, plus a sign-up bonus
    points = (spend_total * (1 - rng.uniform(0, 0.7, n) * (spend_total > 0)) + 100).astype(np.int64)
    age_days = np.ceil(rng.uniform(18, 69.99, n) * 365.25)  # whole days, never under 18 years
    birthday = (np.datetime64(end, "D") - age_days.astype("timedelta64[D]")).astype(object)
    birthday[rng.random(n) < 0.08] = None
    west = tz >= _WESTERN_FROM
    first_name = np.where(west, _pick(NAMES_WEST, rng.integers(0, len(NAMES_WEST), n)),
                          _pick(NAMES_CN, rng.integers(0, len(NAMES_CN), n)))

    customers = pd.DataFrame({
        "customer_id": ids,
        "signed_up_at": _stamps(origin, people.signup),
        "timezone": _pick(TIMEZONES, tz),
        "member_tier": _pick(TIERS, np.searchsorted(TIER_SPEND_365D, spend_year, side="right")),
        "points": points,
        "birthday": pd.Series(birthday, dtype=object),
        "first_name": first_name,
        "email": np.where(has_email, _numbered("c", n, 7, first=first, total=total) + "@example.com", None),
        # +86 100... is not an allocated mobile prefix, so these can never reach a real phone
        "phone": np.where(has_phone, _numbered("+86100", n, 8, first=first, total=total), None),
        "advisor_id": np.where(advisor > 0, _pick(_numbered("A", N_ADVISORS, 3), advisor - 1), None),
    })
    m = orders["owner"].size
    order_frame = pd.DataFrame({
        "order_id": _numbered("O", m, 9, first=first_order, total=first_order + m - 1),
        "customer_id": ids[orders["owner"]],
        "ordered_at": _stamps(origin, orders["time"]),
        "amount": orders["amount"],
        "channel": _pick(ORDER_CHANNELS, orders["channel"]),
        "category": _pick(CATEGORIES, orders["category"]),
        "items": orders["items"],
    })
    event_frame = pd.DataFrame({
        "customer_id": ids[events["owner"]],
        "occurred_at": _stamps(origin, events["time"]),
        "type": _pick(EVENT_TYPES, events["type"]),
        "channel": _pick(("app", "miniprogram", *CONSENT_CHANNELS), events["channel"]),
    })
    consent_frame = pd.DataFrame({
        "customer_id": ids[consents["owner"]],
        "channel": _pick(CONSENT_CHANNELS, consents["channel"]),
        "purpose": _pick(("marketing", "service"), consents["purpose"]),
        "granted_at": _stamps(origin, consents["granted"]),
        "withdrawn_at": _stamps(origin, consents["withdrawn"]),
    })
    return World(customers, order_frame, event_frame, consent_frame)


def write_world(engine: Engine, world: World) -> dict[str, int]:
    """Load `world` into an empty warehouse in one transaction; returns rows written per table."""
    return load_world(engine, [world])


def load_world(engine: Engine, parts: Iterable[World]) -> dict[str, int]:
    """Load a world chunk by chunk (e.g. `iter_world`) into an empty warehouse, in one transaction.

    Indexes are dropped once and rebuilt after the last chunk, so only one chunk is in memory at a
    time and the load costs what one `bulk_load` of the whole world would.
    """
    upgrade(engine)
    with engine.begin() as conn:
        existing = conn.execute(select(func.count()).select_from(schema.customers)).scalar_one()
        if existing:
            raise WarehouseError(
                f"the warehouse at {display_url(str(engine.url))} already has {existing} customers",
                hint="generate into an empty warehouse (--db sqlite:///other.db)",
                code="L410",
            )
        tables = [schema.metadata.tables[name] for name in schema.DATA_TABLES]
        counts = dict.fromkeys(schema.DATA_TABLES, 0)
        with without_indexes(conn, tables):
            for part in parts:
                for table in tables:
                    counts[table.name] += bulk_insert(conn, table, getattr(part, table.name))
    if engine.dialect.name == "postgresql":  # fresh tables: statistics for the planner and the visibility map
        # that index-only counts need (the incremental state's late-rows check), before autovacuum gets there
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE " + ", ".join(t.name for t in tables))
    return counts


@dataclass
class _People:
    """Each customer's hidden truth, one array entry per customer; times in days since the origin."""

    signup: np.ndarray
    rate: np.ndarray  # orders per day while alive; 0 for never-buyers
    regularity: np.ndarray  # Gamma shape of the gaps between orders: 1 = Poisson, higher = steadier
    death: np.ndarray  # when the customer silently stops buying (may be after the horizon)
    spend: np.ndarray  # typical order value
    buyer: np.ndarray

    def part(self, rows: slice) -> _People:
        return _People(self.signup[rows], self.rate[rows], self.regularity[rows], self.death[rows],
                       self.spend[rows], self.buyer[rows])


class _Clock:
    """Places a day-resolution time at a plausible local hour, in UTC days since the origin."""

    def __init__(self, rng: np.random.Generator, offsets: np.ndarray, horizon: float) -> None:
        self.rng, self.offsets, self.horizon = rng, offsets, horizon
        self.hour_p = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
        self.tz = np.zeros(0, dtype=np.int64)  # each customer's timezone code, set once known

    def local_time(self, tz: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Keep the day of `t`, redraw the time of day from the local daily rhythm in timezone `tz`."""
        day = np.floor(t).astype(np.int64)
        local = self.rng.choice(24, t.size, p=self.hour_p) * 3600 + self.rng.integers(0, 3600, t.size)
        offset = self.offsets[tz, np.clip(day, 0, self.offsets.shape[1] - 1)]
        return day + (local - offset) / DAY

    def place(self, owner: np.ndarray, t: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`t` at the owners' local hours, and a mask of those still inside [owner's start, horizon)."""
        moved = self.local_time(self.tz[owner], t)
        return moved, (moved >= start[owner]) & (moved < self.horizon)


def _poisson(rng: np.random.Generator, start: np.ndarray, stop: np.ndarray,
             rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a homogeneous Poisson process per row on [start, stop): (row index, time)."""
    length = np.clip(stop - start, 0, None)
    owner = np.repeat(np.arange(start.size), rng.poisson(rate * length))
    return owner, start[owner] + rng.random(owner.size) * length[owner]


def _renewal(rng: np.random.Generator, start: np.ndarray, stop: np.ndarray, rate: np.ndarray,
             shape: np.ndarray, season: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Purchases as a renewal process with Gamma(shape) gaps of mean 1/rate, in seasonal time.

    shape 1 is a Poisson process (what BG/NBD assumes); real shoppers are often more regular (a
    replenishment rhythm), which shape > 1 gives. Seasonality is a change of clock: gaps are drawn
    in "season-weighted days", so busy days get more orders without breaking a customer's rhythm.
    """
    days = np.arange(season.size + 1, dtype="float64")
    clock = np.concatenate([[0.0], np.cumsum(season)])
    a0, a1 = np.interp(start, days, clock), np.interp(stop, days, clock)
    span = np.clip(a1 - a0, 0, None)
    expected = rate * span
    draws = np.where(rate > 0, np.ceil(expected + 4 * np.sqrt(expected / shape + 1) + 2), 0).astype(np.int64)
    owner = np.repeat(np.arange(start.size), draws)
    gaps = rng.gamma(shape[owner], 1.0 / (shape[owner] * np.maximum(rate[owner], 1e-12)))
    first = np.cumsum(draws) - draws
    gaps[first[draws > 0]] *= rng.random(int((draws > 0).sum()))  # already mid-rhythm at sign-up
    total = np.cumsum(gaps)
    before = np.concatenate([[0.0], total])[first]  # cumulative sum before each customer's first gap
    position = a0[owner] + total - before[owner]
    keep = position < a1[owner]
    owner, position = owner[keep], position[keep]
    return owner, np.interp(position, clock, days)


def _orders(rng: np.random.Generator, clock: _Clock, season: np.ndarray,
            people: _People) -> dict[str, np.ndarray]:
    """Buy-till-you-die orders with seasonality by thinning; sorted by time."""
    signup, spend, n = people.signup, people.spend, people.signup.size
    alive_until = np.minimum(people.death, clock.horizon)
    owner, t = _renewal(rng, signup, alive_until, people.rate, people.regularity, season)
    welcome = np.flatnonzero(people.buyer & (rng.random(n) < WELCOME_SHARE))
    tw = signup[welcome] + rng.exponential(WELCOME_DAYS, welcome.size)
    alive = tw < alive_until[welcome]
    owner, t = np.concatenate([owner, welcome[alive]]), np.concatenate([t, tw[alive]])
    t, inside = clock.place(owner, t, signup)
    owner, t = owner[inside], t[inside]
    order = np.lexsort((owner, t))
    owner, t = owner[order], t[order]

    m = owner.size
    favourite_cat = rng.choice(len(CATEGORIES), n, p=CATEGORY_WEIGHTS)
    category = np.where(rng.random(m) < 0.55, favourite_cat[owner],
                        rng.choice(len(CATEGORIES), m, p=CATEGORY_WEIGHTS))
    favourite_ch = rng.choice(len(ORDER_CHANNELS), n, p=ORDER_CHANNEL_WEIGHTS)
    channel = np.where(rng.random(m) < 0.6, favourite_ch[owner],
                       rng.choice(len(ORDER_CHANNELS), m, p=ORDER_CHANNEL_WEIGHTS))
    sigma = 0.45
    amount = spend[owner] * np.array(CATEGORY_PRICE)[category] * rng.lognormal(-sigma**2 / 2, sigma, m)
    items = np.minimum(rng.geometric(0.55, m), 5)
    return {"owner": owner, "time": t, "amount": np.maximum(np.round(amount, 2), 1.0),
            "category": category, "channel": channel, "items": items}


def _consents(
    rng: np.random.Generator, people: _People, has_phone: np.ndarray, has_email: np.ndarray,
    has_advisor: np.ndarray, horizon: float,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Consent rows, and [customer, channel] matrices of marketing grant and withdrawal times (inf: none)."""
    signup, n = people.signup, people.signup.size
    eligible = {"sms": has_phone, "email": has_email, "push": np.ones(n, bool), "wecom": has_advisor}
    granted = np.full((n, len(CONSENT_CHANNELS)), np.inf)
    withdrawn = np.full_like(granted, np.inf)
    parts = []
    for (purpose, channel), (p_grant, p_withdraw) in CONSENT_RATES.items():
        k = CONSENT_CHANNELS.index(channel)
        who = np.flatnonzero(eligible[channel] & (rng.random(n) < p_grant))
        # most tick the box while signing up; the rest opt in weeks later
        delay = np.where(rng.random(who.size) < 0.65, rng.exponential(120, who.size) / DAY,
                         rng.exponential(40.0, who.size))
        g = signup[who] + delay
        who, g = who[g < horizon], g[g < horizon]
        w = g + rng.random(g.size) * (horizon - g)
        w = np.where((rng.random(g.size) < p_withdraw) & (w > g + 60 / DAY), w, np.nan)
        if purpose == "marketing":
            granted[who, k], withdrawn[who, k] = g, np.nan_to_num(w, nan=np.inf)
        parts.append((who, np.full(who.size, k), np.full(who.size, int(purpose == "service")), g, w))
    owner, channel, purpose, g, w = (np.concatenate(c) for c in zip(*parts))
    order = np.lexsort((channel, owner))
    rows = {"owner": owner[order], "channel": channel[order], "purpose": purpose[order],
            "granted": g[order], "withdrawn": w[order]}
    return rows, granted, withdrawn


def _events(rng: np.random.Generator, clock: _Clock, season: np.ndarray, people: _People,
            has_advisor: np.ndarray, granted: np.ndarray, withdrawn: np.ndarray) -> dict[str, np.ndarray]:
    """Engagement at a rate tied to buying that fades over the last RAMP_DAYS of life; sorted by time."""
    signup, death, n, horizon = people.signup, people.death, people.signup.size, clock.horizon
    # lognormal(-sigma**2 / 2, sigma) has mean 1: propensity spreads customers without moving the average
    base = (ENGAGE_FLOOR + ENGAGE_PER_ORDER_RATE * people.rate) * rng.lognormal(-0.125, 0.5, n)
    eseason = 1 + EVENT_SEASON_WEIGHT * (season - 1)
    peak = eseason.max()
    alive_until = np.minimum(death, horizon)
    owner_a, t_a = _poisson(rng, signup, alive_until, base * peak)
    ramp = np.clip((death[owner_a] - t_a) / RAMP_DAYS, 0, 1)
    keep = rng.random(t_a.size) < (RAMP_LOW + (1 - RAMP_LOW) * ramp) * eseason[t_a.astype(np.int64)] / peak
    owner_d, t_d = _poisson(rng, alive_until, np.full(n, horizon), base * AFTER_DEATH)
    owner, t = np.concatenate([owner_a[keep], owner_d]), np.concatenate([t_a[keep], t_d])
    t, inside = clock.place(owner, t, signup)
    owner, t = owner[inside], t[inside]

    m = owner.size
    etype = rng.choice(len(EVENT_TYPES), m, p=EVENT_TYPE_WEIGHTS)
    # channel codes: 0 app, 1 miniprogram, 2 + index into CONSENT_CHANNELS
    prefers_app = rng.beta(2, 2, n)
    channel = np.where(rng.random(m) < prefers_app[owner], 0, 1)
    msg = np.where(etype == 2, rng.choice(4, m, p=OPEN_CHANNEL_WEIGHTS),
                   rng.choice(4, m, p=CLICK_CHANNEL_WEIGHTS))
    is_msg = (etype == 2) | (etype == 3)
    channel = np.where(is_msg, 2 + msg, channel)
    channel = np.where(etype == 4, 2 + CONSENT_CHANNELS.index("wecom"), channel)
    # messages only reach customers with marketing consent on that channel at that moment;
    # group chat needs an advisor's WeCom contact
    consented = (granted[owner, msg] <= t) & (t < withdrawn[owner, msg])
    ok = np.where(is_msg, consented, np.where(etype == 4, has_advisor[owner], True))
    owner, t, etype, channel = owner[ok], t[ok], etype[ok], channel[ok]
    order = np.lexsort((owner, t))
    return {"owner": owner[order], "time": t[order], "type": etype[order], "channel": channel[order]}


def _numbered(prefix: str, count: int, digits: int, *, first: int = 1, total: int | None = None) -> np.ndarray:
    """prefix0000001, prefix0000002, ... as an object array, numbers `first`..; wider when `total`
    (default `count`) needs more digits, so every chunk of one world numbers alike."""
    numbers = np.arange(first, first + count).astype(str)
    if count == 0:  # numpy's zfill cannot size an empty array
        return numbers.astype(object)
    width = max(digits, len(str(total if total is not None else count)))
    return np.strings.add(prefix, np.strings.zfill(numbers, width)).astype(object)


def _pick(labels: tuple[str, ...], codes: np.ndarray) -> np.ndarray:
    """Labels by code as an object array sharing one str per label: 8 bytes a row, not a str each."""
    return np.array(labels, dtype=object)[codes]


def _stamps(origin: np.datetime64, t: np.ndarray) -> pd.Series:
    """Days since `origin` as naive-UTC datetime64[us], whole seconds; NaN becomes NaT."""
    seconds = np.floor(np.asarray(t, dtype=float) * DAY)
    values = origin.astype("datetime64[s]") + np.nan_to_num(seconds).astype("timedelta64[s]")
    values = values.astype("datetime64[us]")
    values[np.isnan(seconds)] = np.datetime64("NaT")
    return pd.Series(values)


def _utc_offsets(origin: np.datetime64, days: int) -> np.ndarray:
    """[timezone, day] UTC offsets in seconds, so local hours stay right across DST changes."""
    start = dt.datetime.combine(origin.astype(dt.date), dt.time(12), tzinfo=dt.timezone.utc)
    out = np.empty((len(TIMEZONES), days), dtype=np.int64)
    for i, name in enumerate(TIMEZONES):
        zone = ZoneInfo(name)
        out[i] = [(start + dt.timedelta(days=d)).astimezone(zone).utcoffset().total_seconds()
                  for d in range(days)]
    return out


def _seasonality(origin: np.datetime64, days: int) -> np.ndarray:
    """Relative order intensity per day: 618, Singles' Day, December highs; Chinese New Year low."""
    dates = pd.DatetimeIndex(origin + np.arange(days))
    month, day = dates.month.to_numpy(), dates.day.to_numpy()
    s = np.ones(days)
    s[(month == 7) | (month == 8)] = 0.85  # summer lull
    s[(month == 6) & (day <= 18)] = 1.5
    s[(month == 6) & (day == 18)] = 2.5
    s[((month == 10) & (day >= 20)) | ((month == 11) & (day <= 10))] = 1.4  # Singles' Day pre-sales
    s[(month == 11) & (day == 11)] = 4.0
    s[(month == 11) & (day >= 12) & (day <= 15)] = 1.2
    s[(month == 12) & (day <= 24)] = 1.3
    s[(month == 12) & (day == 12)] = 2.0
    for year in range(dates.year.min() - 1, dates.year.max() + 2):
        cny = np.datetime64(f"{year}-{CNY.get(year, '02-05')}")
        since = (dates.to_numpy().astype("datetime64[D]") - cny).astype(np.int64)
        s[(since >= -25) & (since < -10)] = 1.3  # new-year shopping
        s[(since >= -10) & (since <= 6)] = 0.45  # couriers stop, shoppers travel home
    return s

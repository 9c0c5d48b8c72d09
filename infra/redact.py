"""Text that leaves the process: credentials masked, control characters stripped, CSV cells defused.

Pure functions, standard library only, used wherever text reaches a terminal, a log, a Prefect
artifact, the ledger or a file someone opens in a spreadsheet:

    mask_url(url)            http://user:pw@host/x?token=abc  ->  http://user:***@host/x?token=***
    mask_secrets_in(text)    the same for every URL in free text, plus `Bearer ...` and `password=...`
    strip_controls(text)     C0/C1 control characters (and bidi overrides) removed; newline and tab kept
    csv_safe(value)          '=HYPERLINK(...)  -> "'=HYPERLINK(...)": a spreadsheet shows it, never runs it
    mask_id / mask_person    C00012342 -> C00****42; a message's customer id and first name masked

None of them raises on odd input: a masking helper that fails would take the message it guards with it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# Query (and fragment) parameters whose value is a credential: ?token=, ?access_token=, ?key=,
# ?api_key=, ?corpsecret= (WeCom), ?sig=/?signature= (signed URLs), ?password=, ?sslpassword=, ...
_SECRET_PARAM = re.compile(
    r"(?i)^(.*[_-])?(token|access[_-]?token|refresh[_-]?token|id[_-]?token|key|api[_-]?key|apikey|secret|"
    r"client[_-]?secret|corpsecret|password|sslpassword|passphrase|passwd|pwd|pass|sig|signature|auth|authorization|credentials?|"
    r"session|sessionid|code)$")
# Schemes where a user name alone is commonly a credential (https://TOKEN@host/...); a database
# URL's user name (postgresql://lifecycle@db/...) is not, and stays readable.
_TOKEN_USER_SCHEMES = {"http", "https", "ws", "wss", "ftp", "ftps"}
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# `Authorization: Bearer abc...` / `Basic dXNlcjpwdw==` as they appear in headers and error texts
_BEARER = re.compile(r"\b((?i:bearer)|Basic(?=\s+[A-Za-z0-9+/]*[0-9+/=]))(\s+)([A-Za-z0-9._~+/=-]{8,})")
_KEY_VALUE = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_-])*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|corpsecret|access[_-]?key))"
    r"(\s*[=:]\s*)(?!\*\*\*)([\"']?)([^\s&\"',;]+)")
# Bidirectional overrides and isolates reorder what a terminal shows ("Trojan Source"); they are
# format characters, not controls, but never belong in a name, an id or a provider's reply.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_WHITESPACE_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85")
_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _hide(secret: str, same_width: bool) -> str:
    return "*" * len(secret) if same_width else MASK


def _mask_params(part: str, same_width: bool = False) -> str:
    """`a=1&token=abc` -> `a=1&token=***`; the rest of the text exactly as written (no re-encoding)."""
    if "=" not in part:
        return part
    out = []
    for item in re.split(r"([&;])", part):
        name, eq, value = item.partition("=")
        secret = eq and value and _SECRET_PARAM.match(name.strip())
        out.append(f"{name}={_hide(value, same_width)}" if secret else item)
    return "".join(out)


def mask_url(url: str) -> str:
    """The URL with its password, credential query parameters and control characters masked.

    `http://user:pw@host` -> `http://user:***@host`; `https://TOKEN@host` -> `https://***@host`;
    `postgresql://lifecycle:pw@db/x` -> `postgresql://lifecycle:***@db/x`; `?token=abc` -> `?token=***`.
    Text that is not a URL comes back with only its control characters stripped.
    """
    return _masked_url(strip_controls(str(url), keep=""), same_width=False)


def _masked_url(text: str, same_width: bool) -> str:
    try:
        parts = urlsplit(text)
    except ValueError:  # an unbalanced '[' in the host: mask what looks like a password anyway
        return re.sub(r"(//[^/@:]*:)([^/@]*)@", lambda m: f"{m.group(1)}{_hide(m.group(2), same_width)}@", text)
    if not parts.scheme or not parts.netloc and not parts.query:
        return text
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:{_hide(password, same_width)}" if password or same_width else user
        elif parts.scheme.lower() in _TOKEN_USER_SCHEMES:
            userinfo = _hide(user, same_width)
        netloc = f"{userinfo}@{hostport}"
    try:
        masked = urlunsplit((parts.scheme, netloc, parts.path, _mask_params(parts.query, same_width),
                             _mask_params(parts.fragment, same_width)))
    except ValueError:
        return text
    # urlunsplit drops an empty '?' or '#'; where the width must stay, keep the text as written then
    return masked if not same_width or len(masked) == len(text) else text


def mask_secrets_in(text: str, *, same_width: bool = False) -> str:
    """Free text (an exception message, a log line) with every URL masked by `mask_url`, and
    `Bearer abc...`, `password=...`, `token: ...` values replaced by ***; control characters but
    newline and tab stripped.

    `same_width=True` masks each secret with as many `*` and leaves control characters alone, so
    the columns of a source line shown with a caret under it stay where they were.
    """
    text = str(text) if same_width else strip_controls(str(text))
    text = _URL_IN_TEXT.sub(lambda m: _masked_url(m.group(0), same_width) if same_width else mask_url(m.group(0)), text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{_hide(m.group(3), same_width)}", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{_hide(m.group(4), same_width)}", text)


def strip_controls(text: str, *, keep: str = "\n\t") -> str:
    """`text` without C0/C1 control characters, DEL and bidi overrides, except those in `keep`.

    A whitespace control that is not kept (CR, LF, tab, NEL, ...) becomes one space, so words stay
    apart (`"a\\r\\nb"` -> `"a b"` with `keep=""`); the others are removed: a provider's reply or a
    customer's name cannot move the cursor, clear the screen or colour a terminal.
    """
    text = str(text)
    if text.isprintable() and not (_BIDI & set(text)):
        return text  # the common case, in C
    if "\n" in keep:
        text = text.replace("\r\n", "\n")
    out: list[str] = []
    for ch in text:
        if ch in keep:
            out.append(ch)
        elif ch in _BIDI:
            continue
        elif unicodedata.category(ch) == "Cc":
            if ch in _WHITESPACE_CONTROLS and not (out and out[-1] in " \n\t"):
                out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def mask_id(value: Any) -> str:
    """An identifier a reviewer can tell apart but not use: C00012342 -> C00****42 (short ones: ****)."""
    text = str(value)
    return text[:3] + "****" + text[-2:] if len(text) > 6 else "****"


def mask_person(text: str | None, customer_id: Any = None, first_name: Any = None) -> str | None:
    """A rendered message with its customer's id and first name masked, as `lifecycle plan` shows
    samples: the id as `mask_id` does, the name as its first letter and `***`."""
    if text is None:
        return None
    if customer_id is not None and str(customer_id):
        text = text.replace(str(customer_id), mask_id(customer_id))
    if isinstance(first_name, str) and len(first_name) > 1:
        text = text.replace(first_name, first_name[0] + "***")
    return text


def csv_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows rather than evaluates (OWASP's CSV injection advice).

    Text that starts with `= + - @`, a tab or a carriage return (or their full-width forms, which
    some spreadsheets also read as formulas) gets a leading single quote. Anything that is not
    text (numbers, dates, None) is returned as it is: numbers stay numbers.
    """
    if isinstance(value, str) and value.startswith(_CSV_TRIGGERS):
        return "'" + value
    return value

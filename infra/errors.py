"""One error hierarchy with stable codes; the CLI turns these into one clear line and an exit code.

    LifecycleError                 L000  exit 1   base; anything we raise on purpose
    ├── AuthorError                L1xx  exit 2   a file an author wrote is wrong (playbook, template)
    │   └── ConfigError            L2xx  exit 2   lifecycle.yaml / environment settings are wrong
    ├── UsageError                 L3xx  exit 2   the command line is wrong (missing path, bad date)
    └── RunError                   L4xx+ exit 1   the run cannot go on; nothing half-written
        ├── WarehouseError         L4xx           unreachable, empty, or schema from the future
        ├── ModelError             L5xx           no trained model, unusable artifact
        └── DispatchError          L6xx           a channel refused or failed

Author and usage errors exit 2 without a traceback; run errors name what was affected and what to
run next; anything else is a bug and keeps its traceback. A warning (L218) is printed by `lifecycle
check` as `path:line:col: warning[CODE] message` and raises nothing: the exit code stays 0.

Playbook problems, one stable code per kind (each printed as `path:line:col: error[CODE] message`):

    L101 file not found            L120 unknown key               L134 unknown template variable
    L102 not UTF-8                 L121 missing key               L135 template reaches into internals
    L103 YAML syntax               L122 wrong type or value       L136 unknown model
    L104 tab in indentation        L123 not a valid name          L137 unknown segment
    L105 duplicate key             L124 name is not the file's    L138 email without unsubscribe link
    L106 not a mapping / too big   L125 defined twice             L140 segment rule structure
         (over 1 MiB, aliases)
    L110 expression syntax/type    L130 unknown channel           L141 segment can never match
    L111 unknown feature           L131 channel nobody consents   L142 churn_score without a model
                                   L132 template file missing     L143 template needs an offer
                                   L133 template syntax, or       L144 uplift_score misused
                                        Jinja refused to compile  L145 unknown filter or test
                                                                  L146 include/import/extends outside
                                                                       templates/ (or not a constant)
                                                                  L147 a filter templates may not use
                                                                  L148 format on a value (|format,
                                                                       .format(), % on text)
                                                                  L149 certain to fail or blow up
                                                                  L150 splits do not add up to 100
                                                                  L151 invalid cron
                                                                  L152 unknown timezone
                                                                  L153 unknown event type
                                                                  L154 invalid time of day
                                                                  L155 re-entry mode and days disagree
                                                                  L156 loaded template not in templates/
                                                                  L157 templates load each other (cycle)
                                                                  L158 template over 64 KiB
                                                                  L159 nested over 64 levels (and config)

Config, command line, run:

    L201 config file not found     L301 not a database URL        L401 no warehouse file there
    L202 env variable not set      L302 no driver for the URL     L402 cannot connect
    L203 config not a mapping      L303 playbook not found        L403 schema revision unknown
    L204 config key/value wrong    L320 CSV rows or header wrong  L404 tables without migrations
    L205 channel type unavailable  L321 CSV file not found        L405 no lifecycle tables yet
    L206 PREFECT_API_URL not set   L322 --map not SOURCE=TARGET   L406 customers unreadable
    L207 Prefect server down       L323 --customers/--events      L407 no customers
    L208 server refused deployment      without --orders          L408 no orders
    L209 Secret block missing      L324 no orders at all          L410 generate into non-empty
    L210 name of a system flow     L325 --dask with one shard     L411 file is not a database
    L211 prefect-dask missing      L326 --dask not an address     L412 file truncated/corrupted
    L212 Dask scheduler down       L330 no touches to report on   L413 a table was dropped
    L213 remote Dask, no server    L331 playbook has no goal      L414 a column was dropped
    L214 worker config differs     L332 --from after --to
    L215 channel name invalid      L340 unknown customer id
    L216 channel URL not http(s)   L341 CSV file empty / no header
    L217 header cannot be sent     L342 CSV file not UTF-8
    L218 warning: a secret written L343 CSV quote never closed
         in lifecycle.yaml as text L344 CSV column twice (or by --map)
                                   L345 CSV row's field count wrong
                                   L346 --map-type wrong
                                   L347 rows of unknown customers
                                   L348 --create-customers misused
                                   L349 date outside 1910..2189
                                   L350 --default-timezone unknown
                                   L351 --errors file not writable
    L501 no trained model          L505 too little history        L601 template failed to render
    L502 feature table incomplete  L506 BG/NBD cannot be fitted
    L503 model artifact damaged    L507 drift over the stop level
    L504 features do not match     L508 no model artifact there   L602 channel provider down
                                   L509 too little randomised history for uplift
                                                                  L603 a run step failed; its
                                                                       dependents were skipped
                                                                  L604 channel misconfigured
                                                                       (redirect, credentials, url)
                                                                  L605 a channel broke off (a bug)
                                                                  L606 the ledger stopped answering
                                                                       mid-send: the channel stops
"""

from __future__ import annotations


class LifecycleError(Exception):
    """Base class: a message saying what happened and a hint saying what to do."""

    code = "L000"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def render(self) -> str:
        """The text the CLI prints: what went wrong, then what to do about it."""
        text = f"error[{self.code}]: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class AuthorError(LifecycleError):
    """Something an author wrote is wrong; `problems` holds located ones (`path:line:col: error[...]`)."""

    code = "L100"
    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None,
                 problems: list[str] | None = None) -> None:
        super().__init__(message, hint=hint, code=code)
        self.problems = list(problems or [])

    def render(self) -> str:
        """Located problems each carry their own code; a bare message gets the usual one line."""
        if not self.problems:
            return super().render()
        text = "\n\n".join(self.problems)
        return text + (f"\n\n{self.message}" + (f"\n  hint: {self.hint}" if self.hint else "")
                       if len(self.problems) > 1 else "")


class ConfigError(AuthorError):
    code = "L200"


class UsageError(LifecycleError):
    code = "L300"
    exit_code = 2


class RunError(LifecycleError):
    code = "L400"
    exit_code = 1


class WarehouseError(RunError):
    code = "L400"


class ModelError(RunError):
    code = "L500"


class DispatchError(RunError):
    code = "L600"

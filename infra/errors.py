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
run next; anything else is a bug and keeps its traceback.
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
    code = "L100"
    exit_code = 2


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

"""The one error family interptest raises at its public boundary.

Every error a user can cause (a malformed spec, a model that cannot be loaded, a claim that
names something the model does not have) is an ``InterpError``: the plugin turns these into
collection errors or failures with the message alone, never a traceback.
"""

from __future__ import annotations


class InterpError(Exception):
    """Base class of every error interptest reports to a user."""


class ModelNotAvailable(InterpError):
    """A model could not be loaded: missing directory, no safetensors weights, not cached offline."""


class SpecError(InterpError):
    """A behavior spec is malformed. Knows where: file, line, behavior and key."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        behavior: str | None = None,
        key: str | None = None,
    ):
        self.message = message
        self.path = path
        self.line = line
        self.behavior = behavior
        self.key = key
        super().__init__(self.__str__())

    def located(self, *, path=None, line=None, behavior=None, key=None) -> SpecError:
        """Fill in location fields that are still unknown (inner layers know less than outer ones)."""
        return SpecError(
            self.message,
            path=self.path or path,
            line=self.line if self.line is not None else line,
            behavior=self.behavior or behavior,
            key=self.key or key,
        )

    def __str__(self) -> str:
        where = self.path or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        parts = []
        if self.behavior:
            parts.append(f"behavior {self.behavior!r}")
        if self.key:
            parts.append(f"key {self.key!r}")
        context = (", ".join(parts) + ": ") if parts else ""
        return f"{where}: {context}{self.message}"


class SpecErrors(SpecError):
    """Several errors of one spec file (or one behavior), each located; reported together so that one
    mistake does not hide the next."""

    def __init__(self, errors: list[SpecError]):
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.message, path=first.path, line=first.line, behavior=first.behavior, key=first.key)

    def __str__(self) -> str:
        return "\n".join(SpecError.__str__(e) if type(e) is SpecError else str(e) for e in self.errors)


def each_error(error: SpecError) -> list[SpecError]:
    """The single errors a (possibly combined) spec error holds."""
    return list(error.errors) if isinstance(error, SpecErrors) else [error]


def combined(errors: list[SpecError]) -> SpecError:
    """One error for ``errors`` (several: a :class:`SpecErrors`)."""
    flat = [single for error in errors for single in each_error(error)]
    return flat[0] if len(flat) == 1 else SpecErrors(flat)

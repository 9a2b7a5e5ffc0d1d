"""Failure classification: every exception (or rejected result) gets an `ErrorKind`.

A `Classifier` tries its rules in order, first match wins; then the built-in
rules (the marker exceptions, httpx and aiohttp errors by status and cause,
timeouts, connection errors, programming errors);
then its default kind. Rules may look at the job through `current_job()`
(attempt number, item, the dependency the failure came from).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from asyncbatch._errors import (
    AsyncBatchError,
    ConfigError,
    ErrorKind,
    FatalError,
    PermanentError,
    RecoverableError,
    TransientError,
)

from ._http import matcher as _http_matcher

__all__ = [
    "BUILTIN_RULES",
    "Classifier",
    "ClassifierLike",
    "RejectedResult",
    "Rule",
    "as_classifier",
]


class RejectedResult(AsyncBatchError):
    """A job returned a value that a ``Rule(result=...)`` classifies as a failure.

    Attributes:
        result: the value the job returned.
    """

    def __init__(self, result: object) -> None:
        self.result = result
        # A rejected value that says when to come back (an HTTP response with
        # Retry-After, see asyncbatch.http) delays the retry like an exception would.
        delay = getattr(result, "retry_after", None)
        if isinstance(delay, int | float) and not isinstance(delay, bool):
            self.retry_after = float(delay)
        super().__init__(f"result rejected by a classifier rule: {result!r:.200}")


@dataclass(frozen=True, slots=True)
class Rule:
    """One classification rule: ``Rule(ExcA, ExcB, kind=..., when=...)``.

    Args:
        *types: exception classes the rule matches (subclasses included).
            With none given and no ``result=``, every exception matches.
        kind: the `ErrorKind` a match means.
        when: optional ``predicate(exc) -> bool`` that must also hold.
        result: ``predicate(value) -> bool`` for jobs that return errors
            instead of raising; a match turns the success into a failure
            (a `RejectedResult`) of this kind.
    """

    types: tuple[type[BaseException], ...]
    kind: ErrorKind
    when: Callable[[BaseException], bool] | None
    result: Callable[[Any], bool] | None

    def __init__(
        self,
        *types: type[BaseException],
        kind: ErrorKind | str,
        when: Callable[[BaseException], bool] | None = None,
        result: Callable[[Any], bool] | None = None,
    ) -> None:
        for t in types:
            if not (isinstance(t, type) and issubclass(t, BaseException)):
                raise ConfigError(f"Rule types must be exception classes, got {t!r}")
        if result is not None and (types or when is not None):
            raise ConfigError(
                "a Rule matches either exceptions or results; "
                "HINT: split it into Rule(Exc, kind=...) and Rule(result=..., kind=...)"
            )
        object.__setattr__(self, "types", types or ((BaseException,) if result is None else ()))
        object.__setattr__(self, "kind", _as_kind(kind))
        object.__setattr__(self, "when", when)
        object.__setattr__(self, "result", result)

    def matches(self, exc: BaseException) -> bool:
        """True when this exception rule applies to ``exc``."""
        if self.result is not None or not isinstance(exc, self.types):
            return False
        return self.when is None or bool(self.when(exc))


def _as_kind(kind: ErrorKind | str) -> ErrorKind:
    try:
        return ErrorKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in ErrorKind)
        raise ConfigError(f"unknown error kind {kind!r}; use one of: {choices}") from None


def _has_retry_after(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "retry_after", None), int | float)


BUILTIN_RULES: tuple[Rule, ...] = (
    Rule(FatalError, kind=ErrorKind.FATAL),
    Rule(PermanentError, kind=ErrorKind.PERMANENT),
    Rule(RecoverableError, kind=ErrorKind.RECOVERABLE),
    Rule(TransientError, kind=ErrorKind.TRANSIENT),
    Rule(MemoryError, kind=ErrorKind.FATAL),
    # httpx and aiohttp errors by status and cause (asyncbatch.http has the table);
    # recognised by module name, so neither library is imported here.
    Rule(Exception, kind=ErrorKind.TRANSIENT, when=_http_matcher("transient")),
    Rule(Exception, kind=ErrorKind.RECOVERABLE, when=_http_matcher("recoverable")),
    Rule(Exception, kind=ErrorKind.PERMANENT, when=_http_matcher("permanent")),
    # A server that says when to come back is overloaded, not broken.
    Rule(Exception, kind=ErrorKind.RECOVERABLE, when=_has_retry_after),
    Rule(TimeoutError, asyncio.TimeoutError, kind=ErrorKind.TRANSIENT),
    Rule(ConnectionError, kind=ErrorKind.TRANSIENT),
    Rule(OSError, kind=ErrorKind.RECOVERABLE),
    # Programming errors and bad input: retrying gives the same answer.
    Rule(
        ValueError,
        TypeError,
        LookupError,
        AttributeError,
        NotImplementedError,
        AssertionError,
        kind=ErrorKind.PERMANENT,
    ),
)


@dataclass(frozen=True, slots=True)
class Classifier:
    """Ordered rules, first match wins, then the built-ins, then ``default``.

    Args:
        rules: your rules, tried before the built-in ones.
        default: the kind of anything no rule matches.
        builtins: set False to skip the built-in rules entirely.
    """

    rules: tuple[Rule, ...] = ()
    default: ErrorKind = ErrorKind.RECOVERABLE
    builtins: bool = True
    _exc_rules: tuple[Rule, ...] = field(init=False, repr=False)
    _result_rules: tuple[Rule, ...] = field(init=False, repr=False)

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        default: ErrorKind | str = ErrorKind.RECOVERABLE,
        builtins: bool = True,
    ) -> None:
        rules = tuple(rules)
        for r in rules:
            if not isinstance(r, Rule):
                raise ConfigError(f"Classifier rules must be ab.Rule, got {r!r}")
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "default", _as_kind(default))
        object.__setattr__(self, "builtins", builtins)
        exc_rules = tuple(r for r in rules if r.result is None)
        object.__setattr__(self, "_exc_rules", exc_rules + (BUILTIN_RULES if builtins else ()))
        object.__setattr__(self, "_result_rules", tuple(r for r in rules if r.result is not None))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by its arguments (a shared run sends it to every worker):
        # the built-in rules hold closures, and are rebuilt on the other side.
        return (_classifier, (self.rules, self.default, self.builtins))

    def __call__(self, exc: BaseException) -> ErrorKind:
        """Classify one exception."""
        for rule in self._exc_rules:
            if rule.matches(exc):
                return rule.kind
        return self.default

    @property
    def checks_results(self) -> bool:
        """True when some rule inspects returned values."""
        return bool(self._result_rules)

    def classify_result(self, value: object) -> ErrorKind | None:
        """The kind of failure ``value`` stands for, or None when it is a success."""
        for rule in self._result_rules:
            assert rule.result is not None
            if rule.result(value):
                return rule.kind
        return None


def _classifier(rules: tuple[Rule, ...], default: ErrorKind, builtins: bool) -> Classifier:
    return Classifier(rules, default=default, builtins=builtins)


ClassifierLike = Classifier | Callable[[BaseException], "ErrorKind | str"]


def as_classifier(classify: ClassifierLike | None) -> Classifier | Callable[[BaseException], Any]:
    """Normalise the ``classify=`` option."""
    if classify is None:
        return Classifier()
    if isinstance(classify, Classifier) or callable(classify):
        return classify
    raise ConfigError(
        f"classify= must be an ab.Classifier or a callable(exc) -> ErrorKind, got {classify!r}"
    )

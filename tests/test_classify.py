"""Classification: built-in defaults, ordered rules, result rules, context-aware rules."""

from __future__ import annotations

from collections import Counter

import pytest

import asyncbatch as ab

K = ab.ErrorKind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ab.TransientError("x"), K.TRANSIENT),
        (ab.RecoverableError("x"), K.RECOVERABLE),
        (ab.PermanentError("x"), K.PERMANENT),
        (ab.FatalError("x"), K.FATAL),
        (TimeoutError(), K.TRANSIENT),
        (ConnectionResetError(), K.TRANSIENT),
        (ConnectionRefusedError(), K.TRANSIENT),
        (ValueError(), K.PERMANENT),
        (TypeError(), K.PERMANENT),
        (KeyError("k"), K.PERMANENT),
        (IndexError(), K.PERMANENT),
        (MemoryError(), K.FATAL),
        (OSError(), K.RECOVERABLE),
        (RuntimeError(), K.RECOVERABLE),
    ],
)
def test_builtin_defaults(exc: BaseException, kind: ab.ErrorKind) -> None:
    assert ab.Classifier()(exc) is kind


def test_exception_with_retry_after_is_recoverable() -> None:
    class Throttled(Exception):
        retry_after = 3

    assert ab.Classifier()(Throttled()) is K.RECOVERABLE


def test_rules_are_tried_in_order_before_the_builtins() -> None:
    class ApiError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(f"HTTP {status}")
            self.status = status

    classifier = ab.Classifier(
        [
            ab.Rule(ApiError, kind=K.PERMANENT, when=lambda e: 400 <= e.status < 500),  # type: ignore[attr-defined]
            ab.Rule(ApiError, kind=K.TRANSIENT),
            ab.Rule(ValueError, kind=K.RECOVERABLE),
        ],
        default=K.FATAL,
    )
    assert classifier(ApiError(404)) is K.PERMANENT
    assert classifier(ApiError(503)) is K.TRANSIENT
    assert classifier(ValueError()) is K.RECOVERABLE  # user rule beats the built-in
    assert classifier(ab.TransientError()) is K.TRANSIENT  # built-in marker rule
    assert classifier(RuntimeError()) is K.FATAL  # the default


def test_classifier_without_builtins_uses_only_its_rules() -> None:
    c = ab.Classifier([ab.Rule(KeyError, kind=K.TRANSIENT)], default="permanent", builtins=False)
    assert c(KeyError()) is K.TRANSIENT
    assert c(ab.TransientError()) is K.PERMANENT


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ab.Rule(int, kind=K.PERMANENT), "exception classes"),  # type: ignore[arg-type]
        (lambda: ab.Rule(ValueError, kind="bad"), "unknown error kind"),
        (
            lambda: ab.Rule(ValueError, kind=K.PERMANENT, result=bool),
            "either exceptions or results",
        ),
        (lambda: ab.Classifier(["nope"]), "must be ab.Rule"),  # type: ignore[list-item]
    ],
)
def test_bad_rules_are_config_errors(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ab.ConfigError, match=match):
        make()


async def test_result_rules_turn_returned_errors_into_failures() -> None:
    calls = Counter[int]()

    async def api(x: int) -> dict[str, object]:
        calls[x] += 1
        if x == 1 and calls[x] < 3:
            return {"error": "busy"}
        if x == 2:
            return {"error": "not found"}
        return {"ok": x}

    classifier = ab.Classifier(
        [
            ab.Rule(result=lambda r: r.get("error") == "busy", kind=K.TRANSIENT),
            ab.Rule(result=lambda r: "error" in r, kind=K.PERMANENT),
        ]
    )
    fast = ab.Retry(attempts=5, backoff=ab.Backoff.constant(0))
    result = await ab.run_batch(api, [1, 2], classify=classifier, retry=fast, concurrency=1)
    assert result["0"].status is ab.JobStatus.SUCCEEDED
    assert result["0"].attempts == 3
    dead = result["1"]
    assert dead.status is ab.JobStatus.DEAD_LETTERED
    assert isinstance(dead.error, ab.RejectedResult)
    assert dead.error.result == {"error": "not found"}


async def test_rules_can_look_at_the_job_context() -> None:
    """Context-aware: the third failure of the same job is treated as permanent."""
    classifier = ab.Classifier(
        [ab.Rule(ab.TransientError, kind=K.PERMANENT, when=lambda e: ab.current_job().attempt >= 3)]
    )

    async def job(x: int) -> None:
        raise ab.TransientError("flaky")

    fast = ab.Retry(attempts=10, backoff=ab.Backoff.constant(0))
    result = await ab.run_batch(job, [1], classify=classifier, retry=fast)
    outcome = result.outcomes[0]
    assert outcome.attempts == 3
    assert [h.kind for h in outcome.history] == [K.TRANSIENT, K.TRANSIENT, K.PERMANENT]


async def test_plain_callable_classifier_may_return_strings() -> None:
    async def job(x: int) -> None:
        raise RuntimeError("boom")

    result = await ab.run_batch(job, [1], classify=lambda e: "permanent")
    assert result.outcomes[0].kind is K.PERMANENT
    assert result.outcomes[0].attempts == 1

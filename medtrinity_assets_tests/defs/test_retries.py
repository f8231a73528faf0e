"""Step retries in Dagster: a transient error is retried with the policy's backoff until the
step succeeds or the attempts run out; any other error fails the step on its first attempt."""

from pathlib import Path

import dagster as dg
import pytest

from medtrinity_assets.defs.retries import TRANSIENT_RETRY, retry_if_transient

# The production numbers (10 s base) with a base short enough for a test.
FAST = dg.RetryPolicy(max_retries=TRANSIENT_RETRY.max_retries, delay=0.05, backoff=TRANSIENT_RETRY.backoff)


def _flaky_asset(attempts: Path, failures: list[BaseException]) -> dg.AssetsDefinition:
    @dg.asset
    def flaky(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
        with retry_if_transient(context, FAST):
            if context.retry_number < len(failures):
                raise failures[context.retry_number]
        return dg.MaterializeResult(metadata={"attempt": context.retry_number + 1})

    return flaky


def _run(asset):
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], instance=instance, raise_on_error=False)
        retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        return result, retries


def test_transient_errors_are_retried_until_the_step_succeeds(tmp_path):
    attempts = tmp_path / "attempts"
    result, retries = _run(_flaky_asset(attempts, [ConnectionResetError("reset"), TimeoutError("slow")]))
    assert result.success
    assert attempts.read_text() == "xxx"
    assert len(retries) == 2
    # Exponential backoff: the second wait is three times the first (jitter off in FAST).
    waits = [e.event_specific_data.seconds_to_wait for e in retries]
    assert waits == pytest.approx([0.05, 0.15])


def test_a_transient_error_that_persists_fails_after_the_policy_s_attempts(tmp_path):
    attempts = tmp_path / "attempts"
    result, retries = _run(_flaky_asset(attempts, [ConnectionRefusedError("down")] * 10))
    assert not result.success
    assert len(attempts.read_text()) == FAST.max_retries + 1
    assert len(retries) == FAST.max_retries


def test_other_errors_fail_at_once_with_their_own_message(tmp_path):
    attempts = tmp_path / "attempts"
    result, retries = _run(_flaky_asset(attempts, [ValueError("spec says mask_glob but no mask matches")]))
    assert not result.success
    assert attempts.read_text() == "x" and retries == []
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    error = failure.step_failure_data.error
    assert "no mask matches" in (error.message + str(error.cause or ""))


def test_the_production_policy_backs_off_exponentially():
    assert TRANSIENT_RETRY.max_retries == 3 and TRANSIENT_RETRY.backoff == dg.Backoff.EXPONENTIAL

"""Step retries for transient failures only (medtrinity_assets/transient.py says which).

A ``dg.RetryPolicy`` on an asset retries every exception, a bug or a bad spec included, each
after a longer wait. So the assets carry no policy: ``TRANSIENT_RETRY`` is the policy's numbers
(attempts, base delay, exponential backoff, jitter), and ``retry_if_transient`` raises
``dg.RetryRequested`` with the policy's delay for a transient error alone; any other error
reaches the UI unchanged on the first attempt. A run whose worker process died (killed, out of
memory) is the instance's business: ``run_retries`` in deploy/dagster.postgres.yaml.
"""

from __future__ import annotations

from contextlib import contextmanager

import dagster as dg

from medtrinity_assets.transient import is_transient

# Waits of about 10, 30 and 70 s (exponential, +-10 s jitter): long enough for a restarted
# database, a re-mounted share or a rate limit's window, short next to a partition's minutes.
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


@contextmanager
def retry_if_transient(context: dg.AssetExecutionContext, policy: dg.RetryPolicy = TRANSIENT_RETRY):
    """Around an asset's work: a transient error becomes a retry request after the policy's
    delay for this attempt (``context.retry_number`` counts the retries so far)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, (dg.RetryRequested, dg.Failure)) or not is_transient(error):
            raise
        attempt = context.retry_number + 1
        wait = max(0.0, policy.calculate_delay(attempt))
        context.log.warning(
            f"transient error, retry {attempt} of {policy.max_retries} in {wait:.0f} s: {type(error).__name__}: {error}"
        )
        raise dg.RetryRequested(max_retries=policy.max_retries, seconds_to_wait=wait) from error

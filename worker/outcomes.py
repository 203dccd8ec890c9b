"""What a recipient's status becomes after one attempt: a pure table from (class, attempts) to status."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from worker.catalogue import ErrorClass
from worker.errors import CoupontoolsError
from worker.policy import Policy
from worker.statuses import Status

STATUS_OF_CLASS = {
    ErrorClass.ACCOUNT: Status.ABORTED,
    ErrorClass.RUN: Status.ABORTED,
    ErrorClass.INVALID: Status.INVALID,
    ErrorClass.BLACKLISTED: Status.BLACKLISTED,
    ErrorClass.FAILED: Status.FAILED,
    ErrorClass.UNCERTAIN: Status.UNCERTAIN,
    ErrorClass.TEMPORARY: Status.RETRY_WAIT,
}
STOPS_RUN = frozenset({ErrorClass.ACCOUNT, ErrorClass.RUN})


@dataclass(frozen=True, slots=True)
class Outcome:
    row: int
    status: Status
    code: int = 0
    message: str = ""
    due: float = 0.0  # when a retry_wait row may go again
    error_class: ErrorClass | None = None

    @property
    def stops_run(self) -> bool:
        return self.error_class in STOPS_RUN


def sent(row: int) -> Outcome:
    return Outcome(row, Status.SENT)


def after_error(row: int, attempts: int, error: CoupontoolsError, policy: Policy,
                now: float | None = None, rng: random.Random | None = None) -> Outcome:
    """The outcome of attempt number `attempts` that ended in `error`."""
    cls = policy.classify(error)
    code = error.code or error.http_status or 0
    message = str(error)
    if cls is ErrorClass.TEMPORARY:
        if attempts >= policy.retry.max_attempts:
            return Outcome(row, Status.FAILED, code, f"gave up after {attempts} attempts: {message}", 0.0, cls)
        delay = policy.retry.delay(attempts, error.retry_after, rng)
        return Outcome(row, Status.RETRY_WAIT, code, message, (now or time.time()) + delay, cls)
    return Outcome(row, STATUS_OF_CLASS[cls], code, message, 0.0, cls)

"""How apply runs its calls: the executor's options, which its rolling stops share whole."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.execute.operation_wait import DEFAULT_LAG_ALLOWANCE


@dataclass
class ExecOptions:
    """Parallelism, attempts, waits and polls of one apply; ``clock`` and ``sleep`` for tests."""

    parallelism: int = 4
    max_attempts: int = 3  # per binding (and per stop or start), counting the first call
    wait_timeout: float = 600.0  # seconds a wave may wait for status 20 to clear
    poll_initial: float = 0.5
    poll_max: float = 5.0
    # 3.0: how long an instance may still show its previous operation after a call (Terraform's
    # 10 s); after it, an operation not found is observed through the binding itself.
    lag_allowance: float = DEFAULT_LAG_ALLOWANCE
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

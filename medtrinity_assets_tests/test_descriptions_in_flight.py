"""The descriptions stage's rows in flight: never more calls at once than the concurrency, the
output in input order whatever order the calls finish in, an exception handed back in its
place, and the gauge's max and mean measured from real overlapping calls."""

from __future__ import annotations

import threading
import time

from medtrinity_assets.stages import InFlightGauge, _ordered_in_flight


def test_calls_overlap_up_to_the_limit_and_come_back_in_order():
    gauge = InFlightGauge()
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def work(i: int):
        with gauge.track():
            with lock:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            # Later items finish first: the order out must still be the order in.
            time.sleep(0.05 if i % 3 == 0 else 0.01)
            with lock:
                running["now"] -= 1
        if i == 7:
            raise ValueError("bad record 7")
        return i * 10

    started = time.perf_counter()
    out = list(_ordered_in_flight(iter(range(24)), work, concurrency=4))
    elapsed = time.perf_counter() - started
    assert [item for item, _ in out] == list(range(24))
    assert [r for i, r in out if i != 7] == [i * 10 for i in range(24) if i != 7]
    assert isinstance(out[7][1], ValueError)
    assert running["most"] == gauge.max == 4
    assert 2.5 < gauge.mean <= 4.0
    # One at a time would take 8 x 0.05 + 16 x 0.01 = 0.56 s.
    assert elapsed < 0.4


def test_one_at_a_time_runs_in_the_callers_thread():
    gauge = InFlightGauge()
    threads = set()

    def work(i):
        with gauge.track():
            threads.add(threading.current_thread().name)
        return i

    assert [r for _, r in _ordered_in_flight(iter(range(5)), work, concurrency=1)] == list(range(5))
    assert threads == {threading.current_thread().name} and gauge.max == 1

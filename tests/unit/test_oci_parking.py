"""The pool of parked supervisors: a take never waits for the spare thread, spares are kept at
their count, and a close dismisses every spare (the real supervisors: integration tier)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dockworker.engine.oci.parking import Parking
from dockworker.errors import InfrastructureError


@dataclass
class Units:
    parked: list[int] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    fail: bool = False

    def park(self) -> int:
        with self.lock:
            if self.fail:
                raise InfrastructureError("cannot park")
            self.parked.append(len(self.parked))
            return self.parked[-1]

    def discard(self, unit: int) -> None:
        with self.lock:
            self.discarded.append(unit)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_spares_are_kept_and_handed_out_then_dismissed_at_close() -> None:
    units = Units()
    parking = Parking(units.park, units.discard, spare=2)
    first = parking.take()  # none spare yet: parked there and then
    assert first == 0
    wait_until(lambda: len(units.parked) == 3)
    assert len(units.parked) == 3  # the one taken and two spares
    second = parking.take()
    assert second in (1, 2)  # a spare, and one more parked after it
    wait_until(lambda: len(units.parked) == 4)
    assert len(units.parked) == 4 and units.discarded == []
    parking.close()
    assert sorted(units.discarded) == sorted(set(units.parked) - {first, second})
    with pytest.raises(InfrastructureError):
        parking.take()


def test_a_failing_park_is_the_takers_error_and_the_spare_thread_goes_on() -> None:
    units = Units(fail=True)
    parking = Parking(units.park, units.discard, spare=1)
    with pytest.raises(InfrastructureError):
        parking.take()
    units.fail = False
    assert parking.take() == 0
    parking.close()

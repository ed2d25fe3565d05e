"""Liveness of consume loops: the stall verdict, the /healthz endpoint on a real local
server, and the shared consume loop reporting to it (no Kafka: a scripted consumer)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import TopicPartition

from fraudcore.health import LIVENESS, Liveness
from fraudcore.metrics import HEALTH_PATH, start_metrics_server
from fraudcore.service import consume_loop
from fraudcore.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_loop_that_stops_advancing_while_records_wait_is_stalled(clock: FakeClock) -> None:
    liveness = Liveness(stall_after_s=60, clock=clock)
    loop = liveness.watch("quality-gate")
    loop.advanced()
    clock.now += 50
    loop.measured_lag(1_200)
    assert liveness.problems() == []  # within the window
    clock.now += 20
    loop.measured_lag(1_500)
    [problem] = liveness.problems()
    assert problem.startswith("quality-gate: no progress for 70 s")
    assert "1500 records waiting" in problem


def test_a_loop_with_nothing_to_read_is_healthy_however_long_it_idles(clock: FakeClock) -> None:
    liveness = Liveness(stall_after_s=60, clock=clock)
    loop = liveness.watch("archiver")
    for _ in range(10):  # an hour of idle polls, each lag reading 0
        clock.now += 360
        loop.measured_lag(0)
    assert liveness.problems() == []


def test_a_loop_that_keeps_advancing_is_healthy_despite_lag(clock: FakeClock) -> None:
    liveness = Liveness(stall_after_s=60, clock=clock)
    loop = liveness.watch("feature-job")
    for _ in range(20):  # far behind, but catching up
        clock.now += 30
        loop.advanced()
        loop.measured_lag(50_000)
    assert liveness.problems() == []


def test_a_loop_that_reports_nothing_is_stalled_and_a_forgotten_one_is_not(clock: FakeClock) -> None:
    liveness = Liveness(stall_after_s=60, clock=clock)
    blocked = liveness.watch("model-monitor")
    blocked.measured_lag(0)  # its last reading, before it blocked
    clock.now += 61
    [problem] = liveness.problems()
    assert problem == "model-monitor: no progress and no lag reading for 61 s"
    liveness.forget(blocked)
    assert liveness.problems() == []


def test_only_the_stuck_loop_of_several_is_named(clock: FakeClock) -> None:
    liveness = Liveness(stall_after_s=60, clock=clock)
    stuck, busy = liveness.watch("tail"), liveness.watch("reader")
    clock.now += 90
    stuck.measured_lag(7)
    busy.advanced()
    busy.measured_lag(7)
    assert [p.split(":")[0] for p in liveness.problems()] == ["tail"]


def test_the_stall_window_is_a_setting() -> None:
    assert Settings(_env_file=None).consumer_stall_after_s == 120
    with pytest.raises(ValueError, match="consumer_stall_after_s"):
        Settings(_env_file=None, consumer_stall_after_s=1)  # below the loops' lag-reading interval


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[str, Liveness]]:
    liveness = Liveness(stall_after_s=60, clock=clock)
    server = start_metrics_server(0, "127.0.0.1", liveness)
    try:
        yield f"http://127.0.0.1:{server.server_port}", liveness
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_answers_503_with_the_reason_while_a_loop_is_stalled(
    served: tuple[str, Liveness], clock: FakeClock
) -> None:
    url, liveness = served
    answer = httpx.get(url + HEALTH_PATH, timeout=5)
    assert (answer.status_code, answer.text) == (200, "ok\n")  # nothing watched yet

    loop = liveness.watch("archiver")
    clock.now += 120
    loop.measured_lag(42)
    answer = httpx.get(url + HEALTH_PATH, timeout=5)
    assert answer.status_code == 503
    assert answer.text == "archiver: no progress for 120 s with 42 records waiting\n"

    loop.advanced()
    assert httpx.get(url + HEALTH_PATH, timeout=5).status_code == 200
    clock.now += 600
    loop.measured_lag(0)  # idle since, its latest reading: nothing to read
    assert httpx.get(url + HEALTH_PATH, timeout=5).status_code == 200


def test_the_same_port_still_serves_the_metrics(served: tuple[str, Liveness]) -> None:
    url, _ = served
    answer = httpx.get(url + "/metrics", timeout=5)
    assert answer.status_code == 200
    assert "# TYPE consumer_lag_messages gauge" in answer.text


# ------------------------------------------------------------- the shared consume loop


class Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "transactions-raw"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"card"

    def value(self) -> bytes:
        return b"{}"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class ScriptedConsumer:
    """Hands out ``batches`` one per poll, then nothing; the partition ends at ``high``."""

    def __init__(self, batches: list[list[int]], high: int) -> None:
        self.batches = [[Message(o) for o in batch] for batch in batches]
        self.high = high
        self.position_ = 0
        self.rest: list[Message] = []
        self.tp = TopicPartition("transactions-raw", 0)

    def poll(self, timeout: float) -> Any:
        if not self.batches:
            time.sleep(timeout)
            return None
        batch = self.batches.pop(0)
        self.rest = batch[1:]
        self.position_ = batch[-1].offset() + 1
        return batch[0]

    def consume(self, _n: int, _timeout: float) -> list[Any]:
        rest, self.rest = self.rest, []
        return rest

    def assignment(self) -> list[TopicPartition]:
        return [self.tp]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.position_) for tp in partitions]

    def get_watermark_offsets(self, _tp: TopicPartition, **_kwargs: Any) -> tuple[int, int]:
        return 0, self.high

    def commit(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def test_the_consume_loop_reports_a_handler_that_never_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LIVENESS, "stall_after_s", 0.3)
    consumer = ScriptedConsumer([[0, 1, 2], [3, 4]], high=10)
    release, stop = threading.Event(), threading.Event()
    batches: list[list[int]] = []

    def handle(records: list[Any]) -> None:
        batches.append([r.offset for r in records])
        if len(batches) == 2:
            release.wait(10)  # stuck (an S3 write, a Redis call that never answers)

    loop = threading.Thread(
        target=consume_loop, args=(consumer, "quality-gate", handle), kwargs={"stop": stop}
    )
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while len(batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batches == [[0, 1, 2], [3, 4]]
        time.sleep(0.5)  # past the window, the handler still inside
        problems = LIVENESS.problems()
        assert [p.split(":")[0] for p in problems] == ["quality-gate"], problems
    finally:
        stop.set()
        release.set()
        loop.join(10)
    assert not loop.is_alive()
    assert LIVENESS.problems() == []  # the finished loop is forgotten


def test_the_consume_loop_measures_its_lag_and_advances(monkeypatch: pytest.MonkeyPatch) -> None:
    watched: list[Any] = []
    original_watch = LIVENESS.watch

    def watch(name: str) -> Any:
        progress = original_watch(name)
        watched.append(progress)
        return progress

    monkeypatch.setattr(LIVENESS, "watch", watch)
    consumer = ScriptedConsumer([[0, 1, 2, 3]], high=10)
    handled_at: list[float] = []

    def handle(_records: list[Any]) -> None:
        time.sleep(0.05)
        handled_at.append(time.monotonic())

    consume_loop(consumer, "archiver", handle, stop=threading.Event(), idle_exit_s=0.2)  # type: ignore[arg-type]
    [progress] = watched
    assert progress.name == "archiver"
    assert progress.lag == 6  # 10 on the broker, 4 read
    assert progress.advanced_at >= handled_at[0]  # marked once the batch was handled
    assert LIVENESS.problems() == []

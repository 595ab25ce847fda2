"""The agent's wake-up channel (docs/agent.md, "The wake-up channel"): no sleeps, no threads.

The main loop's wait ends at a wake-up's due time; the channel wakes it,
reconnects with jitter and backoff, and survives a hostile server: nonsense
answers are refused at ``DeviceClient._parse``, a silent server is cut at the
deadline, a proxy cutting the request or a server answering at once cannot
make it busy-loop.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from javia_agent.client import DeviceClient
from javia_agent.errors import AgentError, AuthenticationError, NetworkError, ServerError
from javia_agent.wakeup import MIN_WAKE_SPACING_SECONDS, WakeupChannel
from javia_core.wakeup import WakeupAnswer, WakeupReason

from .test_agent_loop import UUID, FakeApi, _harness


def answer(reason: str = "update", *, heartbeat: bool = True, **fields: Any) -> WakeupAnswer:
    return WakeupAnswer.model_validate(
        {"reason": reason, "heartbeat": heartbeat, "reconnect_after_seconds": 1.0, **fields}
    )


class Channel:
    """A channel over scripted outcomes, on a fake monotonic clock advanced by each hold."""

    def __init__(self, outcomes: list[Any], hold_seconds: float = 0.0) -> None:
        self.now = 0.0
        self.outcomes = outcomes
        self.hold_seconds = hold_seconds
        self.wakes: list[float] = []
        self.stop = threading.Event()
        self.channel = WakeupChannel(
            self._request,
            self.wakes.append,
            wait_seconds=90,
            stop=self.stop,
            monotonic=lambda: self.now,
            rng=random.Random(7),
        )

    def _request(self, wait_seconds: int) -> WakeupAnswer:
        assert wait_seconds == 90
        self.now += self.hold_seconds
        outcome = self.outcomes.pop(0) if self.outcomes else answer("idle", heartbeat=False)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def step(self) -> float:
        delay = self.channel.step()
        self.now += delay
        return delay


# -- the main loop's side --------------------------------------------------------------


@pytest.fixture
def agent_and_clock(tmp_path: Path) -> Iterator[tuple[Any, Any, list[float]]]:
    h = _harness(tmp_path, FakeApi())
    waits: list[float] = []

    def fake_event_wait(seconds: float | None = None) -> bool:
        waits.append(seconds or 0.0)
        h.clock.sleep(seconds or 0.0)
        return False

    h.agent._woken.wait = fake_event_wait  # type: ignore[method-assign]
    yield h.agent, h.clock, waits


def test_a_wake_up_ends_the_wait_at_its_due_time_and_the_earliest_wins(agent_and_clock) -> None:
    agent, clock, _ = agent_and_clock
    start = clock.now
    agent._wait(300)
    assert clock.now - start == pytest.approx(300)  # no wake-up: the whole interval

    agent.wake()
    start = clock.now
    agent._wait(300)
    assert clock.now == start  # due now: no wait at all

    agent.wake(40)
    agent.wake(25)  # the earlier request wins
    agent.wake(90)
    start = clock.now
    agent._wait(300)
    assert clock.now - start == pytest.approx(25)
    start = clock.now
    agent._wait(300)
    assert clock.now - start == pytest.approx(300)  # served: not woken again


def test_a_heartbeat_that_starts_after_the_due_time_serves_the_wake_up(agent_and_clock) -> None:
    agent, clock, _ = agent_and_clock
    agent.wake()
    assert agent._take_due_wake() is True  # the cycle about to run heartbeats
    start = clock.now
    agent._wait(300)
    assert clock.now - start == pytest.approx(300)
    agent.wake(60)
    assert agent._take_due_wake() is False  # not due yet: it stays for the wait
    start = clock.now
    agent._wait(300)
    assert clock.now - start == pytest.approx(60)


def test_a_stop_still_ends_the_wait(agent_and_clock) -> None:
    agent, clock, _ = agent_and_clock
    agent.stop()
    start = clock.now
    agent._wait(300)
    assert clock.now == start


# -- the channel -------------------------------------------------------------------------


def test_an_answer_to_heartbeat_wakes_the_main_loop_at_once_and_reconnects_soon() -> None:
    c = Channel([answer("update")], hold_seconds=20)
    delay = c.step()
    assert c.wakes == [0.0]
    assert 1.0 <= delay <= 1.5  # the server's 1 s, with jitter
    c.step()  # idle after a full hold: no wake-up
    assert c.wakes == [0.0]
    assert c.channel.failures == 0


def test_a_spread_delays_the_heartbeat_not_the_next_request(agent_and_clock) -> None:
    c = Channel([answer("update", spread_seconds=120), answer("rollout")], hold_seconds=5)
    c.step()
    assert 0 <= c.wakes[0] <= 120
    assert c.channel.requests == 1
    c.step()  # the channel held again at once: a pause arriving meanwhile is due now
    assert c.wakes[1] == 0.0 and c.channel.requests == 2

    agent, clock, _ = agent_and_clock  # the main loop keeps the earliest due time
    agent.wake(c.wakes[0])
    agent.wake(c.wakes[1])
    start = clock.now
    agent._wait(300)
    assert clock.now == start


def test_wake_ups_reach_the_main_loop_at_most_once_per_spacing() -> None:
    c = Channel([answer("update"), answer("rollout")], hold_seconds=0.2)
    c.channel._rng = random.Random(1)
    c.channel.step()  # answered at 0.2 s
    c.now += 0.2  # reconnected 0.2 s later (a hostile delay), answered at 0.6 s
    c.channel.step()
    assert c.wakes[0] == 0.0
    assert c.wakes[1] == pytest.approx(MIN_WAKE_SPACING_SECONDS - 0.4, abs=0.01)


def test_failures_back_off_exponentially_and_honour_retry_after() -> None:
    cut = NetworkError("wake-up: cannot reach the server: connection reset")
    c = Channel([cut] * 8)
    delays = [c.step() for _ in range(8)]
    assert 1.0 <= delays[0] <= 2.0
    assert delays[-1] >= 128  # 2 s doubling: the 8th ceiling is 256 s
    assert all(d <= 300 for d in delays)
    assert c.wakes == []

    busy = ServerError("wake-up: HTTP 503", status_code=503, retry_after_seconds=40)
    assert Channel([busy]).step() >= 40


def test_a_refused_token_waits_long_and_does_not_wake_the_main_loop() -> None:
    refused = AuthenticationError("wake-up: HTTP 401: invalid device token", status_code=401)
    c = Channel([refused])
    assert c.step() >= 32
    assert c.wakes == []


def test_a_server_answering_at_once_again_and_again_cannot_make_it_busy_loop() -> None:
    # A nonsense server: "heartbeat now" with no hold, reconnect at once, forever.
    c = Channel([answer("update", reconnect_after_seconds=0)] * 200, hold_seconds=0.0)
    steps = 0
    while c.now < 3600 and c.outcomes:
        c.step()
        steps += 1
    assert steps <= 25  # an hour: the delays grew to the 300 s cap
    assert len(c.wakes) == steps and all(w >= 0 for w in c.wakes)


outcomes = st.one_of(
    st.builds(
        answer,
        st.sampled_from([r.value for r in WakeupReason]),
        heartbeat=st.booleans(),
        spread_seconds=st.floats(0, 3600),
        reconnect_after_seconds=st.floats(0, 3600),
    ),
    st.just(NetworkError("cut")),
    st.builds(
        lambda after: ServerError("HTTP 503", status_code=503, retry_after_seconds=after),
        st.one_of(st.none(), st.floats(0, 3600)),
    ),
    st.just(AuthenticationError("HTTP 401", status_code=401)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(outcomes, min_size=1, max_size=30), st.floats(0, 120))
def test_every_delay_is_at_least_a_second_and_bounded(script: list[Any], hold: float) -> None:
    c = Channel(list(script), hold_seconds=hold)
    for _ in script:
        delay = c.step()
        assert 1.0 <= delay <= 3600 * 1.5
    assert all(0 <= w <= 3600 + MIN_WAKE_SPACING_SECONDS for w in c.wakes)


def test_run_ends_when_the_agent_stops_and_survives_a_bug() -> None:
    calls: list[float] = []
    stop = threading.Event()

    def broken(_: int) -> WakeupAnswer:
        raise RuntimeError("a bug")

    def wait(seconds: float) -> bool:
        calls.append(seconds)
        return len(calls) >= 3

    WakeupChannel(broken, lambda _: None, wait_seconds=90, stop=stop, wait=wait).run()
    assert len(calls) == 3 and all(s >= 1 for s in calls)


# -- the one boundary: DeviceClient._parse -------------------------------------------------


def client_for(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> DeviceClient:
    return DeviceClient(
        "https://updates.example.org",
        device_uuid=UUID,
        token="t",
        transport=httpx.MockTransport(handler),
        **options,
    )


def test_the_client_asks_for_its_hold_with_the_device_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"reason": "rollout", "heartbeat": True, "reconnect_after_seconds": 2}
        )

    got = client_for(handler).wait_for_wakeup(75)
    assert got.reason is WakeupReason.ROLLOUT and got.heartbeat and got.reconnect_after_seconds == 2
    assert seen[0].url.path == f"/api/v1/devices/{UUID}/wakeup"
    assert seen[0].url.params["wait"] == "75"
    assert seen[0].headers["Authorization"] == "Bearer t"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>proxy error</html>",
        b'{"reason": "reboot", "heartbeat": true, "reconnect_after_seconds": 1}',
        b'{"reason": "update", "reconnect_after_seconds": 1}',
        b'{"reason": "update", "heartbeat": true, "reconnect_after_seconds": -1}',
        b'{"reason": "update", "heartbeat": true, "reconnect_after_seconds": 1e9}',
        b'{"reason": "update", "heartbeat": true, "reconnect_after_seconds": NaN}',
        b'{"reason": "update", "heartbeat": true, "reconnect_after_seconds": 1, "spread_seconds": 1e12}',
        b'{"reason": "update", "heartbeat": "yes please", "reconnect_after_seconds": 1}',
        b"[]",
        b'{"reason": "update", "heartbeat": true, "reconnect_after_seconds": 1, "x": "'
        + b"a" * (1024 * 1024 + 10)
        + b'"}',
    ],
)
def test_nonsense_answers_are_refused_at_the_boundary(body: bytes) -> None:
    client = client_for(lambda request: httpx.Response(200, content=body))
    with pytest.raises(ServerError, match="server fault"):
        client.wait_for_wakeup(90)


def test_a_server_that_never_answers_is_cut_at_the_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        client = DeviceClient(
            f"http://127.0.0.1:{port}",
            device_uuid=UUID,
            token="t",
            timeout_seconds=0.3,
            request_deadline_seconds=0.3,
        )
        with pytest.raises(AgentError):
            client.wait_for_wakeup(90)
        client.close()

"""call_next's send without anyio's checkpoint (response_start._send_now), next to anyio's own
MemoryObjectSendStream.send (0.15.0 - 0.20.4) and 0.21.0 - 0.38.2's send_no_error over it
(`drops`): every outcome the same, but for a pending cancellation, which it does not raise before
a message that a receive waits for (that checkpoint was a turn of the event loop per message and
layer: docs/cost.md)."""

from __future__ import annotations

import contextlib
from typing import Any, Awaitable, Callable, Dict

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream

from starlette_shield_patch._shield.response_start import _hand_over, _send_now, _state_of

Send = Callable[[Dict[str, Any]], Awaitable[None]]
MESSAGE = {"type": "http.response.body", "body": b"x", "more_body": True}


@pytest.fixture(params=["anyio", "shim"])
def which(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=[False, True], ids=["raises", "drops"])
def drops(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def sender(which: str, stream: MemoryObjectSendStream[dict[str, Any]], drops: bool) -> Send:
    if which == "shim":
        state = _state_of(stream)
        assert state is not None, "the shim does not know this anyio's memory streams"
        return lambda message: _send_now(stream, state, message, drops)
    if not drops:
        return stream.send

    async def send_no_error(message: dict[str, Any]) -> None:  # 0.21.0 - 0.38.2's
        try:
            await stream.send(message)
        except anyio.BrokenResourceError:
            return

    return send_no_error


def run(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(5):
            await main()

    anyio.run(bounded, backend=backend)


def test_a_waiting_receive_gets_the_message_before_a_pending_cancellation(backend: str, which: str) -> None:
    got: list[dict[str, Any]] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, False)

        async def receive() -> None:
            got.append(await receive_stream.receive())

        async with anyio.create_task_group() as group:
            group.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await send(MESSAGE)
                await anyio.lowlevel.checkpoint()  # where the shim's sender meets the cancellation
            group.cancel_scope.cancel()
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)
    # anyio's send takes its checkpoint first and raises the cancellation there, undelivered.
    assert got == ([MESSAGE] if which == "shim" else [])


def test_a_message_nobody_waits_for_waits_for_a_receive(backend: str, which: str) -> None:
    sent: list[bool] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, False)

        async def send_one() -> None:
            await send(MESSAGE)
            sent.append(True)

        async with anyio.create_task_group() as group:
            group.start_soon(send_one)
            await anyio.wait_all_tasks_blocked()
            assert send_stream.statistics().tasks_waiting_send == 1
            assert not sent
            assert await receive_stream.receive() == MESSAGE
        assert sent == [True]
        assert send_stream.statistics().tasks_waiting_send == 0
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)


def test_the_receiving_end_closes_while_it_waits(backend: str, which: str, drops: bool) -> None:
    outcome: list[str] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, drops)

        async def send_one() -> None:
            try:
                await send(MESSAGE)
            except anyio.BrokenResourceError:
                outcome.append("BrokenResourceError")
            else:
                outcome.append("returned")

        async with anyio.create_task_group() as group:
            group.start_soon(send_one)
            await anyio.wait_all_tasks_blocked()
            await receive_stream.aclose()
        assert send_stream.statistics().tasks_waiting_send == 0
        await send_stream.aclose()

    run(backend, main)
    assert outcome == ["returned" if drops else "BrokenResourceError"]


@pytest.mark.parametrize("closed", ["receiving", "sending"])
def test_a_closed_stream(backend: str, which: str, drops: bool, closed: str) -> None:
    outcome: list[str] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, drops)
        await (receive_stream if closed == "receiving" else send_stream).aclose()
        try:
            await send(MESSAGE)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            outcome.append(type(exc).__name__)
        else:
            outcome.append("returned")
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)
    if closed == "sending":
        assert outcome == ["ClosedResourceError"]  # send_no_error lets that one out too
    else:
        assert outcome == ["returned" if drops else "BrokenResourceError"]


def test_a_send_that_nothing_will_take_lets_the_loop_turn(backend: str, which: str, drops: bool) -> None:
    # An inner app that sends in a loop until it hears http.disconnect (1.10.0's
    # test_app_receives_http_disconnect_while_sending_if_discarded) is told by another task: a
    # send that fails or is dropped at once must still give the event loop its turn.
    turned: list[bool] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, drops)
        await receive_stream.aclose()

        async def other() -> None:
            turned.append(True)

        async with anyio.create_task_group() as group:
            group.start_soon(other)
            for _ in range(3):  # trio may run this task first in the turn after the first send
                with contextlib.suppress(anyio.BrokenResourceError):
                    await send(MESSAGE)
            assert turned == [True]
        await send_stream.aclose()

    run(backend, main)


def test_cancelled_while_it_waits_the_message_is_withdrawn(backend: str, which: str) -> None:
    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, False)

        async def send_one() -> None:
            await send(MESSAGE)

        async with anyio.create_task_group() as group:
            group.start_soon(send_one)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()
        assert send_stream.statistics().tasks_waiting_send == 0
        with pytest.raises(anyio.WouldBlock):
            receive_stream.receive_nowait()
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)


@pytest.mark.skipif(
    not hasattr(anyio.TaskInfo, "has_pending_cancellation"),
    reason="before anyio 4.4.0, send_nowait() hands a message to a receive that is being cancelled, "
    "which keeps it (anyio's receive does not lose an item it got)",
)
def test_a_receive_that_is_being_cancelled_is_passed_over(backend: str, which: str) -> None:
    got: dict[str, Any] = {}

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        send = sender(which, send_stream, False)

        async def receive(name: str, scope: anyio.CancelScope) -> None:
            with scope:
                got[name] = await receive_stream.receive()

        first = anyio.CancelScope()
        async with anyio.create_task_group() as group:
            group.start_soon(receive, "first", first)
            await anyio.wait_all_tasks_blocked()
            first.cancel()  # pending: the first receive is still in waiting_receivers
            group.start_soon(receive, "second", anyio.CancelScope())  # runs once the send waits
            await send(MESSAGE)
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)
    assert got == {"second": MESSAGE}


@pytest.mark.parametrize("closed", ["receiving", "sending"])
def test_hand_over_to_a_closed_stream_does_nothing(backend: str, closed: str) -> None:
    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]
        await (receive_stream if closed == "receiving" else send_stream).aclose()
        assert not _hand_over(send_stream, MESSAGE)
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)


@pytest.mark.skipif(
    not hasattr(anyio.TaskInfo, "has_pending_cancellation"),
    reason="before anyio 4.4.0, send_nowait() hands a message to a receive that is being cancelled",
)
def test_hand_over_to_a_receive_being_cancelled_does_nothing(backend: str) -> None:
    got: list[dict[str, Any]] = []

    async def main() -> None:
        send_stream, receive_stream = anyio.create_memory_object_stream(0)  # type: ignore[var-annotated]

        async def receive() -> None:
            got.append(await receive_stream.receive())

        async with anyio.create_task_group() as group:
            group.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()  # pending: the receive still waits in waiting_receivers
            assert not _hand_over(send_stream, MESSAGE)
        assert send_stream.statistics().tasks_waiting_send == 0
        await send_stream.aclose()
        await receive_stream.aclose()

    run(backend, main)
    assert got == []

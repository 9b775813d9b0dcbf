"""The audit writer's compiled write + fdatasync path (``audit/_syncer.c``): same bytes as the
thread path, durability before a future resolves, real write and fsync failures fail every
waiting record, backpressure, drain on close."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packgate_sidecar.audit._syncer import Syncer
from packgate_sidecar.audit.record import AuditRecord
from packgate_sidecar.audit.verify import verify_path
from packgate_sidecar.audit.writer import AuditQueueFull, AuditWriter, AuditWriterError

from tests.support.audit_records import DAY, KEY, T0, Clock, writer_record


def record(i: int, now: float = T0) -> AuditRecord:
    return writer_record(i, now)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def syncer_of(w: AuditWriter) -> Syncer:
    native = w._native  # the test checks the compiled path is the one in use
    assert native is not None, "the compiled syncer is not built (pip install -e .)"
    return native


# Steps: a record (from the loop, awaited or not, or lazy), a flush, the clock moving on.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["durable", "submit", "lazy", "flush"]), st.just(0.0)),
        st.tuples(st.just("clock"), st.sampled_from([60.0, 0.6 * DAY, 1.2 * DAY])),
    ),
    min_size=1,
    max_size=40,
)


async def _replay(directory: Path, steps: list[tuple[str, float]], native: bool) -> None:
    clock = Clock(T0)
    w = AuditWriter(
        directory, KEY, max_segment_bytes=1500, retention_days=2, clock=clock, native=native
    )
    await w.astart()
    assert (w._native is not None) == native
    waiting = []
    for i, (kind, dt) in enumerate(steps):
        if kind == "clock":
            clock.now += dt
        elif kind == "flush":
            await w.aflush()
        elif kind == "submit":
            w.submit(record(i, clock.now))
        else:
            waiting.append(w.submit_durable(record(i, clock.now), lazy=kind == "lazy"))
        if i % 3 == 0:
            await asyncio.sleep(0)  # let some batches complete between records
    await asyncio.gather(*waiting)
    await w.aclose()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
def test_the_syncer_writes_the_same_bytes_as_the_writer_thread(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, float]]
) -> None:
    # Same records, same clock, same key: the sealed log is a function of them, so the compiled
    # path (with rollovers and pruning through the thread in between) must leave identical files.
    logs = {}
    for native in (False, True):
        directory = tmp_path_factory.mktemp("native" if native else "thread")
        asyncio.run(_replay(directory, steps, native))
        logs[native] = files(directory)
        assert verify_path(directory, [KEY]).ok
    assert logs[True] == logs[False]


def test_threads_submitting_across_rollovers_through_the_syncer_keep_the_order(
    tmp_path: Path,
) -> None:
    clock = Clock(T0)
    w = AuditWriter(tmp_path, KEY, max_segment_bytes=3000, clock=clock)
    w.start()
    syncer_of(w)

    def producer(n: int) -> None:
        for i in range(100):
            w.submit(record(n * 1000 + i))
            if i % 25 == 0:
                w.flush()

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    clock.now = T0 + DAY
    for t in threads:
        t.join()
    w.close()
    result = verify_path(tmp_path, [KEY])
    assert result.ok and result.records == w.stats.written
    assert w.stats.lost == 0 and w.stats.segments > 3


async def test_a_durable_future_resolves_only_after_the_syncer_fdatasynced_its_line(
    tmp_path: Path,
) -> None:
    w = AuditWriter(tmp_path, KEY)
    await w.astart()
    native = syncer_of(w)
    segment = tmp_path / w.segment
    header = len(segment.read_bytes())  # written and fsynced by the thread when it was created
    late: list[int] = []

    def check(i: int, _: asyncio.Future[None]) -> None:
        data = segment.read_bytes()
        end = data.index(b'"req-%d"' % i)
        end = data.index(b"\n", end) + 1
        synced, _syncs, _echo_errors = native.counters()
        if header + synced < end:
            late.append(i)

    futures = []
    for i in range(200):
        w.expect(1)
        done = w.submit_durable(record(i))
        w.expect(-1)
        done.add_done_callback(functools.partial(check, i))
        futures.append(done)
        if i % 7 == 0:
            await asyncio.sleep(0)
    await asyncio.gather(*futures)
    await w.aclose()
    assert late == []
    assert 1 < w.stats.batches < 200  # group commit: concurrent records shared fdatasyncs
    assert verify_path(tmp_path, [KEY]).ok


def _fill(pipe_w: int) -> None:
    """Fill a pipe, so the next write to it blocks until someone reads."""
    os.set_blocking(pipe_w, False)
    try:
        while True:
            os.write(pipe_w, b"x" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(pipe_w, True)


def _read_all(pipe_r: int) -> None:
    while os.read(pipe_r, 1 << 16):
        pass


async def test_a_failed_fdatasync_fails_every_waiting_record_and_refuses_new_ones(
    tmp_path: Path,
) -> None:
    w = AuditWriter(tmp_path, KEY)
    await w.astart()
    syncer_of(w)
    pipe_r, pipe_w = os.pipe()
    _fill(pipe_w)
    # The segment's descriptor now names the full pipe: the syncer's write blocks (a stuck
    # disk), then succeeds once the pipe is read, and its fdatasync fails (EINVAL on a pipe),
    # a real failed fsync from the kernel.
    os.dup2(pipe_w, w._fd)
    futures = [w.submit_durable(record(i)) for i in range(5)]
    await asyncio.sleep(0.05)  # the event loop runs on while the syncer is stuck
    assert not any(f.done() for f in futures)
    reader = threading.Thread(target=_read_all, args=(pipe_r,))
    reader.start()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, AuditWriterError) and "Invalid argument" in str(r) for r in results)
    with pytest.raises(AuditWriterError, match="Invalid argument"):
        w.submit(record(9))
    assert not w.accepting
    with pytest.raises(AuditWriterError):
        await w.aclose()
    os.close(pipe_w)
    await asyncio.to_thread(reader.join)
    os.close(pipe_r)
    assert w.stats.lost == 5 and w.stats.written == 1  # the header only


async def test_a_full_disk_fails_the_waiting_record(tmp_path: Path) -> None:
    w = AuditWriter(tmp_path, KEY)
    await w.astart()
    syncer_of(w)
    full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    os.dup2(full, w._fd)
    os.close(full)
    with pytest.raises(AuditWriterError, match="No space left"):
        await w.submit_durable(record(1))
    with pytest.raises(AuditWriterError, match="No space left"):
        await w.put_durable(record(2))
    with pytest.raises(AuditWriterError):
        await w.aclose()
    assert w.stats.lost == 1


async def test_records_the_syncer_holds_count_against_the_queue(tmp_path: Path) -> None:
    w = AuditWriter(tmp_path, KEY, max_queue=3, fsync=False)
    await w.astart()
    syncer_of(w)
    pipe_r, pipe_w = os.pipe()
    _fill(pipe_w)
    saved = os.dup(w._fd)
    os.dup2(pipe_w, w._fd)  # a stuck disk: the syncer's write blocks
    for i in range(3):
        w.submit(record(i))
    with pytest.raises(AuditQueueFull):
        w.submit(record(3))
    assert not w.accepting
    put = asyncio.ensure_future(w.put(record(4)))
    await asyncio.sleep(0.05)
    assert not put.done()  # waits for room, without blocking the loop
    assert w.stats.rejected == 1 and w.stats.waited == 1

    def unstick() -> None:
        os.read(pipe_r, 1 << 20)  # room in the pipe for the stuck write
        os.dup2(saved, w._fd)  # later records go to the file again

    await asyncio.to_thread(unstick)
    await put
    await w.aclose()
    for fd in (pipe_r, pipe_w, saved):
        os.close(fd)
    assert w.stats.submitted == 4 and w.stats.lost == 0


async def test_close_drains_what_lingers_and_what_the_syncer_holds(tmp_path: Path) -> None:
    w = AuditWriter(tmp_path, KEY)
    await w.astart()
    syncer_of(w)
    w.expect(8)  # others in flight: batches linger for their records
    futures = [w.submit_durable(record(i), counted=True) for i in range(20)]
    w.submit(record(20))
    await w.aclose()
    assert all(f.done() and f.exception() is None for f in futures)
    result = verify_path(tmp_path, [KEY])
    assert result.ok and result.records == 22 and w.stats.lost == 0
    with pytest.raises(AuditWriterError, match="not running"):
        w.submit(record(21))


def test_the_stdout_copy_from_the_syncer_equals_the_file(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    with (tmp_path / "stdout").open("wb") as echo:  # a stream with a descriptor, like stdout
        clock = Clock(T0)
        w = AuditWriter(log_dir, KEY, echo_stream=echo, max_segment_bytes=2000, clock=clock)

        async def main() -> None:
            await w.astart()
            syncer_of(w)
            for i in range(40):
                if i == 20:
                    clock.now += DAY  # a new segment: its header is copied by the thread
                await w.submit_durable(record(i, clock.now))
            await w.aclose()

        asyncio.run(main())
    copied = (tmp_path / "stdout").read_bytes()
    assert copied == b"".join(p.read_bytes() for p in sorted(log_dir.iterdir()))
    assert w.stats.echo_errors == 0


def test_a_blocking_flush_from_an_event_loop_thread_still_returns(tmp_path: Path) -> None:
    # flush() blocks its caller; called on an event loop's thread it must not wait for that
    # (blocked) loop to notice the syncer's completion.
    async def main() -> None:
        w = AuditWriter(tmp_path, KEY)
        await w.astart()
        syncer_of(w)
        w.submit(record(1))
        w.flush()
        assert w.stats.written == 2
        await w.aclose()

    asyncio.run(main())

"""Hostile answers and a failing service, end to end: each fault ends as a retry or a clear failure of its
one task, the run goes on, and a service that stays down stops the run instead of being hammered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batch.simulator import BILLED_FAULTS, SimConfig, simulator_in_thread
from tests.conftest import FAST, KEY, Outcome, env_for, ledger, results

IMAGE_TASKS = "".join(f"  - {{kind: generate, id: img-{i}, prompt: picture {i}}}\n" for i in range(3))
CHAT_TASKS = "".join(
    f"  - {{kind: chat, id: chat-{i}, model: gemini-2.5-flash, prompt: hi {i}, stream: true}}\n"
    for i in range(3)
)


@pytest.mark.parametrize("fault", ["reset", "truncate", "html200", "not_json"])
def test_an_image_answer_garbled_on_the_way_is_retried_once_then_succeeds(
    fault: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + IMAGE_TASKS)
    config = SimConfig(api_key=KEY, faults={fault: 1.0}, fault_once_per_task=True, seed=1)
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", tmp_path / "out", *FAST, env=env_for(sim))
        billed = sim.state.billed_total_tokens
        faults = sim.state.fault_counts()
    assert outcome.code == 0, outcome.out + outcome.err
    assert faults == {fault: 3}
    done = results(tmp_path / "out")
    assert all(r["status"] == "succeeded" and r["attempts"] == 2 for r in done.values())
    recorded = sum(line["total_tokens"] for line in ledger(tmp_path / "out"))
    # A garbled answer says nothing of its usage: the client cannot tell a billed one, so every one is
    # 'maybe billed', never silently lost; the ledger holds exactly the answers that said their usage.
    assert all(r.get("maybe_billed") == 1 for r in done.values())
    assert recorded < billed if fault in BILLED_FAULTS else recorded == billed


@pytest.mark.parametrize("fault", ["no_data", "bad_base64", "bad_image", "bomb", "huge"])
def test_a_whole_answer_that_cannot_be_used_is_never_bought_again(
    fault: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + IMAGE_TASKS)
    config = SimConfig(api_key=KEY, faults={fault: 1.0}, huge_bytes=8 * 2**20, seed=1)
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-answer-mb", "1", env=env_for(sim)
        )
        requests = sim.state.requests_total
        billed = sim.state.billed_total_tokens
    assert outcome.code == 1, outcome.out + outcome.err
    assert requests == 3  # one request a task: what arrived whole is not bought a second time
    done = results(tmp_path / "out")
    lines = ledger(tmp_path / "out")
    for record in done.values():
        assert record["status"] == "failed" and record["attempts"] == 1
        assert record["error"]["message"] and "attempts)" not in record["error"]["message"]
        if fault == "huge":  # never read whole: nothing to keep, and it may have been billed
            assert record["error"]["type"] == "answer_too_large"
            assert record["maybe_billed"] == 1 and "answer_file" not in record
            continue
        # The paid answer is kept as it came, and the ledger has it (at its usage: the simulator sends it),
        # so it is billed for sure, not "maybe".
        assert "maybe_billed" not in record
        kept = (tmp_path / "out" / record["answer_file"]).read_bytes()
        assert kept.startswith(b"{") and b'"usage"' in kept
        assert [line["task_id"] for line in lines].count(record["id"]) == 1
    if fault != "huge":
        assert sum(line["total_tokens"] for line in lines) == billed


@pytest.mark.parametrize("fault", ["stream_cut", "reset", "not_json"])
def test_a_broken_chat_stream_is_retried_once_then_succeeds(
    fault: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + CHAT_TASKS)
    config = SimConfig(api_key=KEY, faults={fault: 1.0}, fault_once_per_task=True, seed=2)
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", tmp_path / "out", *FAST, env=env_for(sim))
    assert outcome.code == 0, outcome.out + outcome.err
    done = results(tmp_path / "out")
    assert all(r["status"] == "succeeded" and r["attempts"] == 2 and r["text"] for r in done.values())


def test_an_answer_that_cannot_be_used_fails_its_task_clearly_and_the_run_goes_on(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + IMAGE_TASKS + CHAT_TASKS)
    # bad_base64 can only hit image answers; the chats are answered normally
    with simulator_in_thread(SimConfig(api_key=KEY, faults={"bad_base64": 1.0})) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "2", env=env_for(sim)
        )
    assert outcome.code == 1
    done = results(tmp_path / "out")
    for i in range(3):
        assert done[f"chat-{i}"]["status"] == "succeeded"
        error = done[f"img-{i}"]["error"]
        assert done[f"img-{i}"]["status"] == "failed" and done[f"img-{i}"]["attempts"] == 1
        assert error == {"type": "bad_image", "status": None, "message": "image 1 is not valid base64"}
        # the answer was billed, and said so: the ledger has it, the task's usage is its usage
        billed = [line for line in ledger(tmp_path / "out") if line["task_id"] == f"img-{i}"]
        assert len(billed) == 1
        assert done[f"img-{i}"]["usage"]["total_tokens"] == billed[0]["total_tokens"]
        assert done[f"img-{i}"]["answer_file"].startswith("answers/img-")


def test_a_slow_answer_times_out_and_is_retried(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n  - {kind: generate, id: slow, prompt: a}\n")
    config = SimConfig(api_key=KEY, faults={"slow": 1.0}, fault_once_per_task=True, slow_seconds=30)
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", tmp_path / "out", *FAST, "--timeout", "0.5", env=env_for(sim))
    assert outcome.code == 0, outcome.err
    record = results(tmp_path / "out")["slow"]
    assert record["attempts"] == 2
    assert record["maybe_billed"] == 1  # the first request may have been billed: it timed out mid-answer


def test_exhausted_quota_stops_the_run_with_69_and_nothing_more_is_sent(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(30)))
    with simulator_in_thread(SimConfig(api_key=KEY, faults={"quota": 1.0})) as sim:
        outcome = cli("run", manifest, "--out", tmp_path / "out", "--concurrency", "3", env=env_for(sim))
        sent = sim.state.requests_total
    assert outcome.code == 69
    assert "quota is exhausted" in outcome.out
    assert sent <= 3  # the requests in flight when the first refusal came; none after
    assert results(tmp_path / "out") == {}  # every task still pending: a later run does them


def test_a_service_that_stays_down_stops_the_run_with_69_instead_of_hammering_it(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(40)))
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=1.0)) as sim:
        outcome = cli(
            "run",
            manifest,
            "--out",
            tmp_path / "out",
            *FAST,
            "--concurrency",
            "4",
            "--max-attempts",
            "1000",
            "--outage-limit",
            "0.6",
            env=env_for(sim),
        )
        sent = sim.state.requests_total
    assert outcome.code == 69
    assert "the service has been failing for" in outcome.out
    # 10 failures open the circuit; then only probes (0.25 s, 0.5 s, ...) until the limit
    assert sent <= 10 + 4 + 3
    assert results(tmp_path / "out") == {}  # no task spent its attempts: all pending


@pytest.mark.timeout(30)
def test_a_service_down_from_the_start_gets_no_more_requests_before_the_outage_limit_than_before(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A run that begins in an outage now probes quickly at first (it cannot yet tell a dead service
    from a limping one), with probes taken from later in the outage: a service down from the start is
    still found on the run's first failures, and sent no more than before: the requests in flight when
    the circuit opened (5 failures, 3 more in flight at -c 4) and the probes of the doubling schedule
    (0.25 s, 0.75 s, 1.75 s, 3.75 s within 4 s). Before the change, 10 to 12 were sent."""
    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(20)))
    with simulator_in_thread(SimConfig(api_key=KEY, error_rate=1.0, error_statuses=(503,))) as sim:
        flags = (*FAST, "-c", "4", "--max-attempts", "1000", "--outage-limit", "4")
        outcome = cli("run", manifest, "--out", tmp_path / "out", *flags, env=env_for(sim))
        sent = sim.state.requests_total
    assert outcome.code == 69, outcome.out + outcome.err
    assert "the service is failing (5 failed attempts in a row" in outcome.err
    assert "the service has been failing for 4 s" in outcome.out
    assert sent <= 5 + 3 + 4, sent
    assert results(tmp_path / "out") == {}


def test_the_run_waits_out_an_outage_and_finishes_when_the_service_returns(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    import socket
    import threading

    manifest = write("tasks:\n" + "".join(f"  - {{kind: generate, prompt: p {i}}}\n" for i in range(6)))
    with socket.socket() as probe:  # a free port with nothing listening yet: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"MAAS_API_KEY": KEY, "MAAS_BASE_URL": f"http://127.0.0.1:{port}/v1/ai", "MAAS_ENDPOINT": "ep"}
    up = threading.Event()
    started = threading.Event()
    stop = threading.Event()
    out = tmp_path / "out"

    def wait_for(ready: Callable[[], bool]) -> None:
        while not stop.is_set() and not ready():
            stop.wait(0.01)

    def failed_requests() -> int:
        logs = list((out / "runs").glob("*.jsonl")) if (out / "runs").exists() else []
        return logs[0].read_text().count('"outcome": "failed"') if logs else 0

    def service_goes_down_and_comes_back() -> None:
        # the service answers the first task, goes away (connections refused), and comes back on that
        # port once the circuit is open and a probe or two has failed
        with simulator_in_thread(SimConfig(api_key=KEY, latency=0.05), port=port):
            up.set()
            wait_for(lambda: (out / "results.jsonl").exists() and (out / "results.jsonl").read_text() != "")
        wait_for(lambda: failed_requests() >= 7)
        with simulator_in_thread(SimConfig(api_key=KEY), port=port):
            started.set()
            stop.wait(60)

    helper = threading.Thread(target=service_goes_down_and_comes_back)
    helper.start()
    try:
        assert up.wait(30)
        outcome = cli("run", manifest, "--out", out, *FAST, "--max-attempts", "5", "-c", "1", env=env)
    finally:
        stop.set()
        helper.join(30)
    assert started.is_set()
    assert outcome.code == 0, outcome.out + outcome.err
    done = results(out)
    assert len(done) == 6 and all(r["status"] == "succeeded" for r in done.values())
    # one task at a time: the task that met the outage sent more attempts than its budget of 5 (4 charged,
    # the 5th opened the circuit, then the probes): failures during the outage were not charged to it
    assert max(r["attempts"] for r in done.values()) > 5


# API.md, "Errors": a 429 "may carry `Retry-After` in seconds or as an HTTP date". A date is a whole second
# at least 1 s ahead: each retry waited for it, though the backoff is 0.
@pytest.mark.parametrize(("retry_after", "as_date", "waited"), [(0.2, False, 0.2), (1, True, 0.9)])
def test_rate_limited_requests_honour_retry_after(
    retry_after: float,
    as_date: bool,
    waited: float,
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    manifest = write("tasks:\n" + "".join(f"  - {{kind: chat, model: m, prompt: p {i}}}\n" for i in range(4)))
    config = SimConfig(api_key=KEY, rate_429=0.5, retry_after=retry_after, retry_after_date=as_date, seed=5)
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "20", env=env_for(sim)
        )
        statuses = sim.state.status_counts()
    assert outcome.code == 0, outcome.err
    assert statuses.get(429, 0) >= 1
    retried = [r for r in results(tmp_path / "out").values() if r["attempts"] > 1]
    assert retried and all(r["seconds"] >= waited for r in retried)  # waited as told, though backoff is 0


# A 429 is a refusal, not billed: "not now". A storm of them (Gemini's RESOURCE_EXHAUSTED, a gateway
# shedding load) shorter than --outage-limit must not fail a night's tasks for good.
@pytest.mark.timeout(60)
def test_a_429_storm_shorter_than_the_outage_limit_fails_no_task(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Every request answered 429 for 3 s. Each 429 spent one of the task's --max-attempts (6): every task
    failed for good within a second, and the night's line does not send a failed task again. A 429 now
    costs no attempt: the tasks wait the storm out (its Retry-After obeyed), and are each bought once."""
    manifest = write("tasks:\n" + CHAT_TASKS)
    config = SimConfig(api_key=KEY, storm_429=3.0, retry_after=0.1, google_errors=True)
    flags = ("--backoff", "0.05", "--backoff-max", "0.2", "--outage-limit", "60")
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", tmp_path / "out", *flags, env=env_for(sim))
        statuses = sim.state.status_counts()
        billed = [record.task_id for record in sim.state.records if record.billed_tokens]
    assert outcome.code == 0, outcome.out + outcome.err
    done = results(tmp_path / "out")
    assert len(done) == 3 and all(r["status"] == "succeeded" for r in done.values())
    assert max(r["attempts"] for r in done.values()) > 6  # more 429s than --max-attempts: none counted
    assert statuses[429] >= 3 * 6 and statuses[200] == 3
    assert sorted(billed) == sorted(done) and len(ledger(tmp_path / "out")) == 3


@pytest.mark.timeout(60)
def test_a_task_still_refused_429_at_its_task_deadline_is_left_pending_not_failed(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Bounded by time, not attempts: a task answered 429 until its --task-deadline stops trying, as any
    task does then, but it is left pending (the run exits 69, resumable), not failed for good: a refusal
    to take it now says nothing of the task. The next run, the storm over, buys it once."""
    manifest = write("tasks:\n" + CHAT_TASKS)
    out = tmp_path / "out"
    flags = ("--backoff", "0.05", "--backoff-max", "0.1", "--task-deadline", "0.5", "--outage-limit", "60")
    with simulator_in_thread(SimConfig(api_key=KEY, rate_429=1.0, retry_after=0)) as sim:
        outcome = cli("run", manifest, "--out", out, *flags, env=env_for(sim))
        refused = sim.state.status_counts()
    assert outcome.code == 69, outcome.out + outcome.err
    assert (
        "3 task(s) left pending, rate limited (3 still answered 429 at their --task-deadline)" in outcome.out
    )
    assert "3 not run" in outcome.out and results(out) == {} and refused == {429: refused[429]}
    with simulator_in_thread(SimConfig(api_key=KEY)) as sim:
        again = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
        requests = sim.state.requests_total
    assert again.code == 0, again.out + again.err
    assert requests == 3 and all(r["status"] == "succeeded" for r in results(out).values())


# API.md, "Errors": 408/409/429 are retried (429 "may carry `Retry-After` in seconds or as an HTTP date"),
# and nothing they answer is billed.
def test_408_and_409_are_retried_and_each_task_bought_once(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    manifest = write("tasks:\n" + IMAGE_TASKS + CHAT_TASKS)
    config = SimConfig(api_key=KEY, error_rate=0.5, error_statuses=(408, 409), seed=1)
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "20", env=env_for(sim)
        )
        statuses = sim.state.status_counts()
        billed = [record.task_id for record in sim.state.records if record.billed_tokens]
    assert outcome.code == 0, outcome.err
    assert statuses.get(408, 0) >= 1 and statuses.get(409, 0) >= 1
    done = results(tmp_path / "out")
    assert len(done) == 6 and all(r["status"] == "succeeded" for r in done.values())
    assert sorted(billed) == sorted(done) and len(ledger(tmp_path / "out")) == 6


def test_a_503s_retry_after_is_waited_out_before_the_task_is_sent_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A 503 may say when to come back (RFC 9110; the simulator's --error-retry-after): with no backoff
    of its own, each task waits that long before it is sent again, and is bought once."""
    manifest = write("tasks:\n" + IMAGE_TASKS + CHAT_TASKS)
    config = SimConfig(api_key=KEY, error_rate=0.5, error_statuses=(503,), error_retry_after=0.3, seed=1)
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "20", env=env_for(sim)
        )
        records = sim.state.records
    assert outcome.code == 0, outcome.err
    refused = [record for record in records if record.status == 503]
    assert refused, [(r.status, r.task_id) for r in records]
    for record in refused:
        after = min(r.time for r in records if r.task_id == record.task_id and r.time > record.time)
        assert after - record.time >= 0.3, (record, after)
    done = results(tmp_path / "out")
    assert all(r["status"] == "succeeded" for r in done.values()) and len(ledger(tmp_path / "out")) == 6


# Gemini's OpenAI-compatible layer writes errors as Google's APIs do, a list of one object:
#   [{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
#               "status": "RESOURCE_EXHAUSTED"}}]
def test_errors_written_as_googles_list_of_one_say_their_message_and_are_retried_as_their_status(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = "".join(f"  - {{kind: chat, id: c{i}, model: m, prompt: p {i}}}\n" for i in range(4))
    manifest = write(
        "tasks:\n" + tasks + "  - {kind: chat, id: refused, model: m, prompt: a forbidden thing}\n"
    )
    config = SimConfig(api_key=KEY, rate_429=0.4, retry_after=0, google_errors=True, seed=5)
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "20", env=env_for(sim)
        )
        statuses = sim.state.status_counts()
    assert outcome.code == 1, outcome.err
    assert statuses.get(429, 0) >= 1 and statuses.get(400, 0) >= 1
    done = results(tmp_path / "out")
    assert all(done[f"c{i}"]["status"] == "succeeded" for i in range(4))
    error = done["refused"]["error"]
    assert error["status"] == 400 and error["message"].startswith(
        "Your request was rejected by the safety system."
    )


@pytest.mark.parametrize(
    ("fault", "flags", "shapes"),
    [
        ("stream_reset_done", (), ()),
        ("stream_error_done", (), ()),
        ("stream_hang", ("--timeout", "1"), ()),
        ("stream_hang", ("--timeout", "1"), ("sse_plain",)),
        ("stream_reset_done", (), ("sse_plain",)),
        ("stream_hang", ("--timeout", "1"), ("no_finish",)),
        ("stream_reset_done", (), ("no_finish",)),
    ],
    ids=[
        "reset before [DONE], after it finished",
        "an error event after it finished",
        "held open after it finished",
        "as text/plain, held open after it finished",
        "as text/plain, reset after it finished",
        "no finish reasons, held open after its usage chunk",
        "no finish reasons, reset after its usage chunk",
    ],
)
def test_a_stream_that_finished_then_went_wrong_is_a_whole_answer_bought_once(
    fault: str,
    flags: tuple[str, ...],
    shapes: tuple[str, ...],
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Every choice finished and the usage sent (the chat.completion.chunk shape of API.md), then the
    connection reset before [DONE], an error event in place of it, or nothing more while the connection
    stays open: the answer is whole. (As the hostile-server test of the reset, test_gateway_faults, builds
    by hand.) The last two were bought again, up to --max-attempts times, with nothing in the ledger."""
    manifest = write("tasks:\n" + CHAT_TASKS)
    config = SimConfig(api_key=KEY, faults={fault: 1.0}, answers=frozenset(shapes))
    with simulator_in_thread(config) as sim:
        # bought again, each failure would look like an outage: stopped in 2 s, not waited out
        flags = (*flags, "--outage-limit", "2")
        outcome = cli("run", manifest, "--out", tmp_path / "out", *FAST, *flags, env=env_for(sim))
        billed = sum(record.billed_tokens for record in sim.state.records)
    assert outcome.code == 0, outcome.out + outcome.err
    done = results(tmp_path / "out")
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 and r["text"] for r in done.values())
    assert sim.state.billed_requests == len(done)  # each bought once
    assert sum(line["total_tokens"] for line in ledger(tmp_path / "out")) == billed


def test_an_error_event_in_the_middle_of_a_stream_is_retried_and_both_answers_are_in_the_ledger(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Half the chunks, the usage, then an error event (a 502 of the upstream): the answer is not whole,
    so it is asked again, but what the first one cost is in the ledger. It was not: the ledger held
    nothing of it, and the result line no maybe_billed either."""
    manifest = write(
        "tasks:\n  - {kind: chat, id: t0, model: gemini-2.5-flash, prompt: hello, stream: true}\n"
    )
    config = SimConfig(api_key=KEY, faults={"stream_error_mid": 1.0}, seed=3)
    with simulator_in_thread(config) as sim:
        outcome = cli(
            "run", manifest, "--out", tmp_path / "out", *FAST, "--max-attempts", "2", env=env_for(sim)
        )
        billed = sum(record.billed_tokens for record in sim.state.records)
    assert outcome.code == 1, outcome.out + outcome.err
    [record] = results(tmp_path / "out").values()
    assert record["status"] == "failed" and record["attempts"] == 2 and record["error"]["status"] == 502
    assert "upstream connection closed (an error sent inside the stream)" in record["error"]["message"]
    assert sim.state.billed_requests == 2 and len(ledger(tmp_path / "out")) == 2
    assert sum(line["total_tokens"] for line in ledger(tmp_path / "out")) == billed > 0
    assert record["usage"]["total_tokens"] == billed


@pytest.mark.parametrize("fault", ["stream_cut", "stream_error_mid"])
def test_a_stream_that_breaks_part_way_without_usage_counts_against_the_budget(
    fault: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """An error event half way through a stream that reported no usage may have been billed: the
    budget counts it at its estimate, as it counts a stream cut short. It was released, not recorded,
    and a run with --max-cost went on sending (13 requests for a budget of 3)."""
    tasks = "".join(
        f"  - {{kind: chat, id: t{i:02d}, model: gemini-2.5-flash, prompt: question {i}, stream: true}}\n"
        for i in range(20)
    )
    manifest = write("tasks:\n" + tasks)
    config = SimConfig(api_key=KEY, faults={fault: 1.0}, answers=frozenset({"no_usage"}))
    flags = ("--max-cost", "0.004", "--max-attempts", "1", "-c", "1", "--outage-limit", "1")
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", tmp_path / "out", *FAST, *flags, env=env_for(sim))
        sent = sim.state.requests_total
    assert outcome.code == 3 and "budget reached" in outcome.out + outcome.err, outcome.out + outcome.err
    assert sent < 6, sent

"""Every answer shape real gateways send, end to end: the simulator answers in it (`SimConfig.answers`), the
tool runs a manifest against it, and each test asserts what was billed for each task, the ledger lines
and their cost, the files, and the result line's fields.

The rule under test: an answer that arrived whole is read, or kept and failed, but never bought twice.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batch.output.report import format_report, format_status, report, status
from batch.running.prices import PriceTable
from batch.simulator import SimConfig, SimState, simulator_in_thread
from batch.simulator.shapes import STREAM_SHAPES
from tests.conftest import FAST, KEY, Outcome, env_for, results

PRICES = "prices: {m: {text_input: 1.0, output: 10.0, cached_input: 0.25}}\n"


def run_shapes(
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
    shapes: Iterable[str],
    tasks: str,
    *args: str,
) -> tuple[Outcome, Path, SimState]:
    manifest = write(PRICES + "tasks:\n" + tasks)
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, answers=frozenset(shapes), seed=5)) as sim:
        outcome = cli("run", manifest, "--out", out, *FAST, *args, env=env_for(sim))
        return outcome, out, sim.state


def ledger(out: Path) -> list[dict[str, Any]]:
    path = out / "usage.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def billed_once_and_recorded(out: Path, state: SimState) -> dict[str, list[dict[str, Any]]]:
    """Each task was billed by one request; its ledger line says what the server billed, under the
    server's request id. Returns the ledger lines by task."""
    lines = ledger(out)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_task.setdefault(line["task_id"], []).append(line)
    # answers that arrived whole are billed for sure: never "maybe billed"
    for line in (out / "results.jsonl").read_text().splitlines():
        assert "maybe_billed" not in json.loads(line)
    paid = [r for r in state.records if r.billed_tokens > 0]
    assert len({r.task_id for r in paid}) == len(paid), "a task was billed twice"
    for record in paid:
        [line] = by_task[str(record.task_id)]
        assert line["server_request_id"] == record.x_request_id
        if not line.get("estimated"):
            assert line["total_tokens"] == record.billed_tokens
    return by_task


def cost(line: dict[str, Any]) -> float:
    cached = line["cached_input_tokens"]
    return ((line["input_tokens"] - cached) * 1.0 + cached * 0.25 + line["output_tokens"] * 10.0) / 1e6


# --- images -----------------------------------------------------------------------------------------


def two_pictures_saved(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path, shape: str
) -> tuple[dict[str, Any], Path, SimState]:
    """A task of two pictures run against the simulator answering in `shape`: it succeeded at its first
    attempt, its two files whole. Returns its result line, DIR and the simulator's state."""
    tasks = "  - {kind: generate, id: pair, model: m, prompt: two cats, n: 2}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, [shape], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["pair"]
    assert record["status"] == "succeeded" and record["attempts"] == 1 and len(record["files"]) == 2
    for path in record["files"]:
        with Image.open(out / path) as image:
            image.load()
    return record, out, state


@pytest.mark.parametrize("shape", ["url", "url_flaky"])
def test_images_sent_as_urls_are_downloaded_without_the_key_and_never_bought_again(
    shape: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    record, out, state = two_pictures_saved(cli, write, tmp_path, shape)
    assert record["revised_prompts"] and all(record["revised_prompts"])
    assert state.requests_total == 1
    downloads = state.downloads
    # the files live on another origin: the key never went there; a flaky file is fetched again
    assert downloads and not any(d.authorized for d in downloads)
    assert [d.status for d in downloads].count(200) == 2
    assert len(downloads) == (4 if shape == "url_flaky" else 2)
    [line] = billed_once_and_recorded(out, state)["pair"]
    assert line["cost"] == pytest.approx(cost(line))
    assert record["request_id"] == line["server_request_id"]


def test_links_on_the_api_origin_redirecting_to_storage_are_followed_the_key_left_behind(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The simulator's `url_redirect`: each `data[i].url` is the API's own link (401 without the key) that
    answers 302 to the file on another origin. The download was refused at the 302 (the key forbade
    following it) and the task failed, its images paid for and lost. Now each link is fetched with the
    key, its redirect followed without it."""
    _, out, state = two_pictures_saved(cli, write, tmp_path, "url_redirect")
    assert state.requests_total == 1
    links = [d for d in state.downloads if d.path.startswith("/_sim/links/")]
    files = [d for d in state.downloads if d.path.startswith("/_sim/files/")]
    assert len(links) == len(files) == 2 and len(state.downloads) == 4
    assert all(d.authorized and d.status == 302 for d in links)
    assert all(not d.authorized and d.status == 200 for d in files)
    assert {d.host for d in links}.isdisjoint({d.host for d in files})
    billed_once_and_recorded(out, state)


def test_a_link_that_is_gone_keeps_the_images_that_came_and_the_answer(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The simulator's `url_lost`: of two linked images, the second's link answers 404 for good. The task
    failed (download_failed) and the first image, fetched and paid for, was thrown away: only the links
    were kept, which expire. Now the images that came are saved, the one lost counted in images_missing
    (as an answer with fewer images than n), the answer with its links kept in answers/; bought once.
    With one image, and its link gone, the task fails as before, its answer kept."""
    tasks = (
        "  - {kind: generate, id: pair, model: m, prompt: two cats, n: 2}\n"
        "  - {kind: generate, id: one, model: m, prompt: a cat}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, ["url_lost"], tasks)
    assert outcome.code == 1, outcome.err
    done = results(out)
    pair, one = done["pair"], done["one"]
    assert pair["status"] == "succeeded" and pair["attempts"] == 1 and len(pair["files"]) == 1
    with Image.open(out / pair["files"][0]) as image:
        image.load()
    assert (
        pair["images_missing"] == 1 and "image 2 could not be downloaded" in pair["images_not_downloaded"][0]
    )
    kept = json.loads((out / pair["answer_file"]).read_text())
    assert [item["url"].endswith("-lost.png") for item in kept["data"]] == [False, True]
    assert one["status"] == "failed" and one["error"]["type"] == "download_failed" and one["answer_file"]
    assert state.requests_total == 2  # each bought once; the lost links fetched again as downloads
    assert [d.status for d in state.downloads].count(404) >= 2
    billed_once_and_recorded(out, state)
    # said beyond report: status, and a column of the CSV (a "succeeded" with one image of two was all
    # they showed)
    found = status(out)
    assert (found["tasks_missing_images"], found["images_missing"]) == (1, 1)
    assert "1 of the succeeded came with fewer images than asked: 1 missing" in format_status(found)
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(cli("export", out).out))}
    assert (rows["pair"]["images_missing"], rows["one"]["images_missing"]) == ("1", "")


@pytest.mark.parametrize("shape", ["url_lost", "fewer"])
def test_the_one_image_that_came_of_an_n_2_task_is_named_two_1_as_the_task_of_n_2_names_it(
    shape: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A task of `n: 2` names its images two~1.png and two~2.png (README, "The output directory"), and a
    pipeline joins files by those names. When one of the two did not come (`url_lost`: its link answers
    404 for good; `fewer`: the answer held one), the one image saved was named two.png, as a task of n: 1
    names its image. Now it is two~1.png: numbered by its place in the answer, of the n asked for."""
    tasks = "  - {kind: generate, id: two, model: m, prompt: two cats, n: 2}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, [shape], tasks)
    assert outcome.code == 0, outcome.err
    two = results(out)["two"]
    assert two["status"] == "succeeded" and two["images_missing"] == 1
    assert two["files"] == ["images/two~1.png"]
    assert sorted(path.name for path in (out / "images").iterdir()) == ["two~1.png"]
    billed_once_and_recorded(out, state)


@pytest.mark.parametrize(("shape", "n", "files"), [("data_url", 1, 1), ("b64_lines", 2, 2), ("mixed", 3, 3)])
def test_base64_written_as_a_data_url_or_wrapped_and_mixed_items_are_all_saved(
    shape: str, n: int, files: int, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: generate, id: t, model: m, prompt: shapes, n: {n}, output_format: webp}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, [shape], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert len(record["files"]) == files and all(p.endswith(".webp") for p in record["files"])
    for path in record["files"]:
        with Image.open(out / path) as image:
            assert image.format == "WEBP"
    assert state.requests_total == 1
    billed_once_and_recorded(out, state)


def test_fewer_images_than_n_is_a_success_that_says_what_is_missing(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = "  - {kind: generate, id: t, model: m, prompt: three dogs, n: 3}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["fewer"], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert record["status"] == "succeeded" and len(record["files"]) == 2 and record["images_missing"] == 1
    found = report(out, PriceTable())
    assert found["images_missing"] == 1 and "images missing: 1" in format_report(found)
    billed_once_and_recorded(out, state)


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_an_error_sent_with_200_is_that_error_with_its_message_and_costs_nothing(
    kind: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: {kind}, id: t, model: m, prompt: a policy question}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["error200"], tasks)
    assert outcome.code == 1
    record = results(out)["t"]
    assert record["status"] == "failed" and record["attempts"] == 1 and state.requests_total == 1
    error = record["error"]
    assert error["status"] == 400 and error["type"] == "content_policy_violation"
    assert "an error sent with HTTP 200" in error["message"] and len(error["message"]) > 40
    assert ledger(out) == [] and state.billed_total_tokens == 0


# --- chat ---------------------------------------------------------------------------------------------

TOOLS = (
    "tools: [{type: function, function: {name: label, parameters: {type: object, "
    "properties: {label: {type: string}}}}}]"
)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_whole_and_streamed_reach_the_result_line(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = (
        f"  - {{kind: chat, id: t, model: m, prompt: tabby cat, stream: {str(stream).lower()}, {TOOLS}}}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, ["tool_calls"], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert record["finish_reason"] == "tool_calls" and record.get("text") is None
    [call] = record["tool_calls"]
    assert call["type"] == "function" and call["id"] and call["function"]["name"] == "label"
    assert json.loads(call["function"]["arguments"]) == {"label": "tabby", "n": 0}
    assert state.requests_total == 1
    billed_once_and_recorded(out, state)


# Gemini's OpenAI-compatible layer streams each tool call whole in a chunk of its own, without the `index`
# of OpenAI's streams, with its thought signature (`extra_content.google.thought_signature`, which a
# follow-up request must send back), and finishes the choice "stop" (a chunk captured from it:
#   {"delta":{"role":"assistant","tool_calls":[{"extra_content":{"google":{"thought_signature":"..."}},
#    "function":{"arguments":"{...}","name":"read"},"id":"call_297140","type":"function"}]},"index":0}).
TWO_TOOLS = "tools: [{type: function, function: {name: label}}, {type: function, function: {name: rate}}]"


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_streamed_without_index_are_each_kept_whole_with_their_signatures(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: chat, id: t, model: m, prompt: tabby cat, stream: {str(stream).lower()}, {TWO_TOOLS}}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["tool_calls_unindexed"], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert record["finish_reason"] == ("stop" if stream else "tool_calls") and record.get("text") is None
    calls = record["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["label", "rate"]
    for call in calls:
        arguments = json.loads(call["function"]["arguments"])
        assert arguments == {"label": "tabby", "n": 0, "tool": call["function"]["name"]}
        assert call["extra_content"]["google"]["thought_signature"]
    assert len({call["id"] for call in calls}) == 2
    assert state.requests_total == 1
    billed_once_and_recorded(out, state)


# The chat seed, "Tools and Functions": `functions` and `function_call` are "Deprecated | Remains
# compatible". Offered so, a call comes back the deprecated way, OpenAI's published shape:
#   "message": {"role": "assistant", "content": null,
#               "function_call": {"name": "get_current_weather", "arguments": "{ \"location\": ... }"}},
#   "finish_reason": "function_call"
# and streamed as `delta.function_call` (the name, then the arguments in pieces).
FUNCTIONS = "functions: [{name: label, parameters: {type: object, properties: {label: {type: string}}}}]"


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_called_the_deprecated_way_reaches_the_result_line_once_bought(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: chat, id: t, model: m, prompt: tabby cat, stream: {str(stream).lower()}, {FUNCTIONS}}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["tool_calls"], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert record["status"] == "succeeded" and record.get("text") is None and record["attempts"] == 1
    assert record["finish_reason"] == "function_call" and "tool_calls" not in record
    assert record["function_call"]["name"] == "label"
    assert json.loads(record["function_call"]["arguments"]) == {"label": "tabby", "n": 0}
    assert "answer_file" not in record
    assert state.requests_total == 1
    [line] = billed_once_and_recorded(out, state)["t"]
    assert record["cost"] == pytest.approx(cost(line))
    exported = json.loads(cli("export", out, "--format", "openai").out)
    [choice] = exported["response"]["body"]["choices"]
    assert choice["message"]["function_call"] == record["function_call"]
    assert choice["finish_reason"] == "function_call"


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_that_used_up_the_token_limit_fails_once_and_keeps_the_answer(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: chat, id: t, model: m, prompt: hard sum, max_tokens: 64, stream: {str(stream).lower()}}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["length_null"], tasks)
    assert outcome.code == 1
    record = results(out)["t"]
    assert record["status"] == "failed" and record["attempts"] == 1 and state.requests_total == 1
    assert record["error"]["type"] == "token_limit"
    assert (
        "max_tokens 64" in record["error"]["message"]
        and "64 tokens of thinking" in record["error"]["message"]
    )
    kept = (out / record["answer_file"]).read_text()
    assert '"length"' in kept
    [line] = billed_once_and_recorded(out, state)["t"]
    assert line["reasoning_tokens"] == 64 and line["output_tokens"] == 64


@pytest.mark.parametrize("stream", [False, True])
def test_images_in_message_images_are_saved_as_files(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = (
        f"  - {{kind: chat, id: t, model: gemini-2.5-flash-image, prompt: draw a fox, "
        f"stream: {str(stream).lower()}}}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, ["message_images"], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    [path] = record["files"]
    with Image.open(out / path) as image:
        assert image.format == "PNG"
    assert record["text"] and "data:image" not in record["text"]
    billed_once_and_recorded(out, state)


@pytest.mark.parametrize("shape", ["reasoning", "thoughts"])
@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_is_kept_apart_from_the_text(
    shape: str, stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = (
        f"  - {{kind: chat, id: t, model: m, prompt: why is the sky blue, stream: {str(stream).lower()}}}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, [shape], tasks)
    assert outcome.code == 0, outcome.err
    record = results(out)["t"]
    assert record["text"].startswith("Simulated answer 1")
    assert record["reasoning"] and record["reasoning"] not in record["text"]
    assert "why" in record["reasoning"].lower() or "sky" in record["reasoning"].lower()
    [line] = billed_once_and_recorded(out, state)["t"]
    assert line["reasoning_tokens"] > 0 and line["output_tokens"] >= line["reasoning_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_counted_only_in_the_total_is_billed_as_output(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: chat, id: t, model: m, prompt: think hard, stream: {str(stream).lower()}}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["thinking_in_total"], tasks, "--max-cost", "1")
    assert outcome.code == 0, outcome.err
    [line] = billed_once_and_recorded(out, state)["t"]
    raw = line["usage"]
    assert raw["total_tokens"] == raw["prompt_tokens"] + raw["completion_tokens"] + 1000
    assert line["output_tokens"] == raw["completion_tokens"] + 1000 and line["reasoning_tokens"] == 1000
    assert line["cost"] == pytest.approx(cost(line))  # the thinking is priced at the output rate
    assert results(out)["t"]["cost"] == pytest.approx(line["cost"])


def test_cached_prompt_tokens_are_kept_and_priced_at_the_cached_rate(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    prompt = "a long shared system prompt " * 20
    tasks = f"  - {{kind: chat, id: t, model: m, prompt: '{prompt}'}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["cached"], tasks)
    assert outcome.code == 0, outcome.err
    [line] = billed_once_and_recorded(out, state)["t"]
    assert line["cached_input_tokens"] == line["input_tokens"] // 2 > 0
    assert line["cost"] == pytest.approx(cost(line))
    assert line["cost"] < (line["input_tokens"] * 1.0 + line["output_tokens"] * 10.0) / 1e6


@pytest.mark.parametrize("shape", sorted(STREAM_SHAPES))  # each way a gateway may write a stream
def test_streams_without_done_with_running_usage_or_with_noise_are_whole_answers(
    shape: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = "".join(
        f"  - {{kind: chat, id: t{i}, model: m, prompt: question {i} here, stream: true, n: 2}}\n"
        for i in range(3)
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, [shape], tasks, "--outage-limit", "1")
    assert outcome.code == 0, outcome.err + outcome.out
    done = results(out)
    for i in range(3):
        record = done[f"t{i}"]
        assert record["attempts"] == 1 and record["text"].startswith("Simulated answer 1")
        assert record["texts"][1].startswith("Simulated answer 2")
        assert "question" in record["text"]
    assert state.requests_total == 3
    billed_once_and_recorded(out, state)


def test_a_stream_without_finish_reasons_or_done_that_ends_on_its_usage_is_bought_once(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A gateway that drops the finish reasons (`no_finish`) and the `[DONE]` (`no_done`): the pieces of
    both choices, then the usage chunk of the whole request, then the end. Taken for a stream cut before
    its choices finished, each answer was bought again, three times, and each task failed."""
    tasks = "".join(
        f"  - {{kind: chat, id: t{i}, model: m, prompt: question {i} here, stream: true, n: 2}}\n"
        for i in range(3)
    )
    outcome, out, state = run_shapes(
        cli, write, tmp_path, ["no_finish", "no_done"], tasks, "--outage-limit", "1"
    )
    assert outcome.code == 0, outcome.err + outcome.out
    done = results(out)
    for i in range(3):
        record = done[f"t{i}"]
        assert record["attempts"] == 1 and record["text"].startswith("Simulated answer 1"), record
        assert record["texts"][1].startswith("Simulated answer 2")
    assert state.requests_total == 3
    billed_once_and_recorded(out, state)


def test_a_stream_without_finish_reasons_cut_before_its_usage_is_still_asked_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The same gateway's stream cut on the way (`stream_cut`: before the usage chunk): its last event
    is a piece of the answer, so it is cut, and asked again."""
    manifest = write(
        PRICES + "tasks:\n  - {kind: chat, id: t, model: m, prompt: hello there, stream: true}\n"
    )
    out = tmp_path / "out"
    config = SimConfig(
        api_key=KEY,
        answers=frozenset({"no_finish", "no_done"}),
        faults={"stream_cut": 1.0},
        fault_once_per_task=True,
        seed=5,
    )
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", out, *FAST, "--outage-limit", "1", env=env_for(sim))
        records = sim.state.records
    assert outcome.code == 0, outcome.err
    cut, whole = records
    assert cut.fault == "stream_cut" and whole.fault is None
    assert results(out)["t"]["attempts"] == 2 and results(out)["t"]["maybe_billed"] == 1


# An answer sent as server-sent events to a request that did not ask for a stream (a gateway that streams
# regardless, or `stream: true` passed under extra:): chat as its chunks, images as OpenAI's image stream,
#   data: {"type": "image_generation.completed", "b64_json": "...", ..., "usage": {...}}
# with no [DONE]. Read to its end, it is whole.
def test_an_answer_streamed_though_not_asked_to_is_read_once_not_bought_again(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = (
        "  - {kind: chat, id: chat, model: m, prompt: tabby cat}\n"
        "  - {kind: generate, id: pair, model: m, prompt: two cats, n: 2}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, ["sse_unasked"], tasks)
    assert outcome.code == 0, outcome.err
    done = results(out)
    assert done["chat"]["text"].startswith("Simulated answer 1") and done["chat"]["finish_reason"] == "stop"
    assert len(done["pair"]["files"]) == 2 and done["pair"].get("images_missing", 0) == 0
    for path in done["pair"]["files"]:
        with Image.open(out / path) as image:
            image.load()
    assert all(record.shapes == ("sse_unasked",) for record in state.records)
    assert state.requests_total == 2
    by_task = billed_once_and_recorded(out, state)
    assert all(not line.get("estimated") for [line] in by_task.values())


# API.md: "The server's request id comes as an `x-request-id` header or the answer's `id`."
def test_without_an_x_request_id_the_answers_own_id_names_it(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = (
        "  - {kind: chat, id: whole, model: m, prompt: tabby cat}\n"
        "  - {kind: chat, id: streamed, model: m, prompt: tabby cat, stream: true}\n"
        "  - {kind: generate, id: picture, model: m, prompt: a cat}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, ["no_request_id"], tasks)
    assert outcome.code == 0, outcome.err
    answer_ids = {str(record.task_id): record.answer_id for record in state.records}
    assert answer_ids["whole"] and answer_ids["streamed"] and answer_ids["picture"] is None
    done = results(out)
    by_task = {line["task_id"]: line for line in ledger(out)}
    for task, answer_id in answer_ids.items():
        assert done[task]["status"] == "succeeded"
        assert done[task].get("request_id") == answer_id
        assert by_task[task]["server_request_id"] == answer_id
    assert state.requests_total == 3 and len(by_task) == 3


@pytest.mark.parametrize("fault", ["stream_cut", "stream_error_mid"])
def test_a_stream_cut_after_a_running_usage_is_in_the_ledger_and_counted_maybe_billed(
    fault: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """A gateway that sends the usage so far on every chunk (`usage_every_chunk`), its stream cut before
    the choice finished (`stream_cut`, once), or ended there by an error event (`stream_error_mid`): the
    server billed the whole answer, 24 tokens, but the last usage that came said 13. The ledger took 13
    as the answer's cost and the request was not counted maybe billed, so 11 billed tokens were nowhere:
    not in the ledger, not in `status`. A usage sent on a chunk of a choice, before every choice
    finished, is a running count: it goes in the ledger, and the request counts as maybe billed too."""
    manifest = write(
        PRICES + "tasks:\n  - {kind: chat, id: t, model: m, prompt: hello there, stream: true}\n"
    )
    out = tmp_path / "out"
    config = SimConfig(
        api_key=KEY,
        answers=frozenset({"usage_every_chunk"}),
        faults={fault: 1.0},
        fault_once_per_task=True,
        seed=5,
    )
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
        records = sim.state.records
    assert outcome.code == 0, outcome.err
    cut, whole = records
    assert cut.fault == fault and whole.fault is None  # asked again: it was cut on the way
    lines = {line["request_id"]: line for line in ledger(out)}
    assert 0 < lines[cut.request_id]["total_tokens"] < cut.billed_tokens  # what it had counted when cut
    assert lines[whole.request_id]["total_tokens"] == whole.billed_tokens
    found = status(out)
    assert found["maybe_billed"] == 1, found  # the cut answer may have cost more than its ledger line
    assert results(out)["t"]["maybe_billed"] == 1


@pytest.mark.parametrize("shapes", [(), ("no_finish",)], ids=["finish reasons", "no_finish"])
def test_an_error_event_after_half_a_stream_and_its_usage_is_the_error_not_a_whole_answer(
    shapes: tuple[str, ...], cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """Half a stream's chunks, the usage chunk (the work was done), then a 502 error event
    (`stream_error_mid`): a stream that ends on its usage chunk is whole, but this one ended on an error,
    its choice unfinished. It is the error it is, and asked again: the half is not taken for the answer."""
    manifest = write(
        PRICES + "tasks:\n  - {kind: chat, id: t, model: m, prompt: hello there, stream: true}\n"
    )
    out = tmp_path / "out"
    config = SimConfig(
        api_key=KEY,
        answers=frozenset(shapes),
        faults={"stream_error_mid": 1.0},
        fault_once_per_task=True,
        seed=5,
    )
    with simulator_in_thread(config) as sim:
        outcome = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
        records = sim.state.records
    assert outcome.code == 0, outcome.err
    cut, whole = records
    assert cut.fault == "stream_error_mid" and whole.fault is None  # asked again
    record = results(out)["t"]
    assert record["attempts"] == 2 and record["text"].startswith("Simulated answer 1"), record


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_without_usage_is_recorded_at_its_estimate(
    stream: bool, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    tasks = f"  - {{kind: chat, id: t, model: m, prompt: hello there, max_tokens: 40, stream: {str(stream).lower()}}}\n"
    outcome, out, state = run_shapes(cli, write, tmp_path, ["no_usage"], tasks)
    assert outcome.code == 0, outcome.err
    [line] = billed_once_and_recorded(out, state)["t"]
    assert line["estimated"] is True and line["usage"] is None
    assert line["output_tokens"] == 40 and line["cost"] == pytest.approx(cost(line))
    assert state.billed_total_tokens > 0  # it was billed all the same
    assert results(out)["t"]["usage"]["total_tokens"] == line["total_tokens"]
    # the report said the estimate as if billed so: it says which of its figures are estimates
    found = report(out, PriceTable())
    assert (found["estimated_answers"], found["estimated_tokens"]) == (1, line["total_tokens"])
    said = f"of which estimated: {line['total_tokens']} tokens of 1 answer(s) that reported no usage"
    assert said in format_report(found)


@pytest.mark.parametrize("shape", ["gzip_members", "gzip_mislabel", "gzip_crlf", "gzip_transfer"])
def test_a_gzip_body_in_members_mislabelled_or_with_a_line_end_after_it_is_read_once(
    shape: str, cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path
) -> None:
    """The simulator's `gzip_members` (RFC 1952: members in a row), `gzip_mislabel` (plain JSON labelled
    gzip), `gzip_crlf` (CRLF after the gzip) and `gzip_transfer` (`Transfer-Encoding: gzip, chunked`), for
    images and chat, not streamed. The last three were taken for corrupt bodies and bought again, three
    times each."""
    tasks = (
        "  - {kind: generate, id: img, prompt: a fox, model: gpt-image-1}\n"
        "  - {kind: chat, id: talk, model: m, prompt: hello}\n"
    )
    outcome, out, state = run_shapes(cli, write, tmp_path, [shape], tasks)
    assert outcome.code == 0, outcome.err
    done = results(out)
    assert done["img"]["status"] == done["talk"]["status"] == "succeeded" and done["talk"]["text"]
    assert all(shape in record.shapes for record in state.records)
    billed_once_and_recorded(out, state)


def test_answers_cut_at_once_while_their_images_are_fetched_are_each_finished_by_the_next_run(
    cli: Callable[..., Outcome], write: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three answers of links being fetched when a second SIGTERM cancels them: each task lists its kept
    answer in answers/.to-finish.jsonl, and the three rewrote the list at once, each from what it had
    read before the others wrote (found by fuzzing: answers listed by the stopped run bought again by the
    next). The list is rewritten by one task at a time; here a slow read of it holds the race open."""
    import os
    import signal
    import time

    import anyio

    from batch.output import runlog
    from batch.running.client import ApiClient

    stalled_now = []

    async def stalled(self: ApiClient, url: str) -> bytes:
        stalled_now.append(url)
        if len(stalled_now) == 3:  # all three are fetching: stop, then cancel them
            os.kill(os.getpid(), signal.SIGTERM)
            await anyio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
        await anyio.sleep(3600)
        raise AssertionError("not cancelled")

    read_lines = runlog.read_lines

    def slow_read(path: Path) -> Any:
        if path.name == runlog.TO_FINISH:
            time.sleep(0.2)  # a busy disk: the others read the list meanwhile
        return read_lines(path)

    monkeypatch.setattr(ApiClient, "download", stalled)
    monkeypatch.setattr(runlog, "read_lines", slow_read)
    tasks = "".join(f"  - {{kind: generate, id: cat-{i}, model: m, prompt: cat {i}}}\n" for i in range(3))
    manifest = write(PRICES + "tasks:\n" + tasks)
    out = tmp_path / "out"
    with simulator_in_thread(SimConfig(api_key=KEY, answers=frozenset({"url"}))) as sim:
        stopped = cli("run", manifest, "--out", out, *FAST, "-c", "3", env=env_for(sim))
        monkeypatch.undo()
        assert stopped.code == 75 and len(stalled_now) == 3, stopped.err
        to_finish = (out / "answers" / ".to-finish.jsonl").read_text().splitlines()
        listed = [json.loads(line)["task_id"] for line in to_finish]
        assert sorted(listed) == ["cat-0", "cat-1", "cat-2"]
        resumed = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
        state = sim.state
    assert resumed.code == 0 and state.requests_total == 3, resumed.err  # none bought again
    assert all(record["status"] == "succeeded" for record in results(out).values())
    billed_once_and_recorded(out, state)


@pytest.mark.parametrize("stop", ["grace over", "second signal"])
def test_a_run_stopped_while_an_answers_images_are_fetched_is_finished_from_it_by_the_next_run(
    stop: str,
    cli: Callable[..., Outcome],
    write: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while a paid answer's link is fetched (a slow file server), and the download cancelled: the
    grace period ran out, or a second signal came. The answer was kept and the task failed with it: a
    resume did not buy it, but did not finish it either, and only retry-failed (buying it again) got its
    picture, where a run killed with SIGKILL at that moment is finished from the kept answer for nothing.
    The stopped run now lists the answer as a killed run's is; the next run fetches its link again,
    sending nothing to the API."""
    import os
    import signal

    import anyio

    from batch.running.client import ApiClient

    async def stalled(self: ApiClient, url: str) -> bytes:
        os.kill(os.getpid(), signal.SIGTERM)  # the run's own handler stops it
        if stop == "second signal":
            await anyio.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)  # and cancels what is in flight
        await anyio.sleep(3600)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(ApiClient, "download", stalled)
    tasks = "  - {kind: generate, id: cat, model: m, prompt: a cat}\n"
    manifest = write(PRICES + "tasks:\n" + tasks)
    out = tmp_path / "out"
    grace = "0.2" if stop == "grace over" else "60"
    with simulator_in_thread(SimConfig(api_key=KEY, answers=frozenset({"url"}))) as sim:
        stopped = cli("run", manifest, "--out", out, *FAST, "--grace", grace, env=env_for(sim))
        monkeypatch.undo()
        assert stopped.code == 75, stopped.err
        assert not (out / "results.jsonl").read_text()  # pending, its answer kept to finish it from
        assert status(out)["maybe_billed"] == 0  # the answer is in the ledger and kept: not "maybe"
        resumed = cli("run", manifest, "--out", out, *FAST, env=env_for(sim))
        state = sim.state
    assert resumed.code == 0 and state.requests_total == 1, resumed.err  # bought once
    assert "1 answer(s) a killed or stopped run paid for are kept in answers/" in resumed.err
    record = results(out)["cat"]
    assert record["status"] == "succeeded" and record["attempts"] == 1, record
    assert json.loads((out / record["answer_file"]).read_text())["data"][0]["url"]
    with Image.open(out / record["files"][0]) as image:
        image.load()
    billed_once_and_recorded(out, state)
    assert status(out)["maybe_billed"] == 0 and not (out / "answers" / ".to-finish.jsonl").read_text()

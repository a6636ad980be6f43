"""What a task leaves in DIR about itself: a ledger line the moment an answer is billed (before anything
else is done with it but keeping it: TaskAttempts._keep), and its result line when it ends."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from batch.errors import ApiError, OutputError
from batch.events import Billed
from batch.kind import Answer, TaskKind, TokenCounts, counts_readable
from batch.manifest.tasks import TaskSpec
from batch.output.store import encode_line
from batch.running.answers import error_record
from batch.running.context import AttemptContext, TaskState
from batch.running.records import ResultRecord, TaskUsage, UsageRecord, made, now

PROMPT_SHOWN = 2000  # characters of a prompt kept in its result line


class LedgerEntry(NamedTuple):
    """A billed answer's ledger line, made before it is written (see TaskAttempts._keep_first)."""

    line: dict[str, Any]
    counts: TokenCounts
    cost: float | None
    encoded: bytes  # the line as usage.jsonl gets it, and the line that keeps its answer carries it


def ledger_entry(
    ctx: AttemptContext,
    spec: TaskSpec,
    kind: TaskKind,
    request_id: str,
    usage: Mapping[str, Any] | None,
    state: TaskState,
) -> LedgerEntry:
    """The ledger line of an answer. An answer that reports no usage, or none that can be read (figures
    as strings, junk, no token at all), is recorded at its estimate, marked `estimated`, so budgets count
    it; its usage is kept as it came."""
    counts = kind.token_counts(usage) if usage is not None and counts_readable(usage) else None
    estimated = counts is None or counts.total <= 0
    if counts is None or estimated:  # the first test narrows the type for mypy; estimated implies it
        counts = kind.estimate(spec.fields)
    cost = ctx.settings.prices.cost(spec.model, counts)
    # every field, the record made without its frozen __init__ (as result_line's): it is only written out
    line = made(
        UsageRecord,
        {
            "task_id": spec.id,
            "request_id": request_id,
            "server_request_id": state.server_request_id,
            "kind": spec.kind,
            "model": spec.model,
            "endpoint": spec.endpoint,
            "counts": counts,
            "cost": cost,
            "usage": usage,
            "at": now(),
            "estimated": estimated,
            "request_sha256": spec.request,
        },
    ).to_line()
    return LedgerEntry(line, counts, cost, encode_line(line))


async def bill(
    ctx: AttemptContext,
    spec: TaskSpec,
    kind: TaskKind,
    request_id: str,
    usage: Mapping[str, Any] | None,
    state: TaskState,
    entry: LedgerEntry | None = None,
) -> None:
    """Record a billed answer in the ledger (`entry`, made already, or its line made now: ledger_entry),
    before anything else is done with it but keeping it (TaskAttempts._keep)."""
    if entry is None:
        entry = ledger_entry(ctx, spec, kind, request_id, usage, state)
    counts, cost = entry.counts, entry.cost
    try:
        await ctx.out.append(ctx.out.usage, entry.encoded)
    except OutputError:
        state.maybe_billed += 1  # billed, but the ledger could not record it (a full disk)
        raise
    if ctx.limits.paced:
        ctx.limits.correct(spec.endpoint, state.estimate, counts.total)
        state.estimate = counts.total  # corrected once
    ctx.budget.record(counts.total, cost)
    if state.booked is not None:  # the actual usage replaces the estimate, in one step
        ctx.budget.settle(*state.booked)
        state.booked = None
    state.billed = True
    state.last_billed = (request_id, counts.input, counts.output, counts.total, cost)
    if cost is None:
        state.unpriced = True
    else:
        state.cost += cost
    state.input_tokens += counts.input
    state.output_tokens += counts.output
    state.total_tokens += counts.total
    ctx.emit(Billed(spec.id, spec.model, counts.input, counts.output, counts.total, cost))


def result_line(
    ctx: AttemptContext, spec: TaskSpec, state: TaskState, started: float, error: ApiError | None
) -> dict[str, Any]:
    """The task's result line, from what it kept while it ran."""
    answer = state.answer or Answer()
    prompt, params = ctx.registry[spec.kind].describe(spec.fields)
    # every field, the record made without its frozen __init__ (7 us of a task's 24 fields): it is only
    # written out; tests/running/test_records.py checks it is the record the constructor makes
    return made(
        ResultRecord,
        {
            "id": spec.id,
            "kind": spec.kind,
            "status": "failed" if error else "succeeded",
            "model": spec.model,
            "custom_id": spec.custom_id,
            "prompt": prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN] + "...",
            "params": params,
            # absolute: the gallery, built later from anywhere, finds them again
            "inputs": tuple(str(info.path.absolute()) for info in spec.inputs.values()),
            "files": tuple(state.files),
            "text": answer.text,
            "extra": answer.extra,
            "images_missing": answer.images_missing,
            "answer_file": state.answer_file,
            "request_id": state.server_request_id,
            "usage": TaskUsage(state.input_tokens, state.output_tokens, state.total_tokens).to_line()
            if state.billed
            else None,
            "cost": None if state.unpriced or not state.billed else round(state.cost, 10),
            "attempts": state.attempts,
            "maybe_billed": state.maybe_billed + state.carried,
            "error": None if error is None else error_record(error, state.attempts),
            "meta": spec.meta or None,
            "endpoint": spec.endpoint,
            "seconds": round(time.monotonic() - started, 3),
            "finished_at": now(),
            "request_sha256": spec.request,
            "raw": {},
        },
    ).to_line()

"""The OpenAI Batch API as a backend of batch inference: half the price, answered within 24 hours.

One *pass* (`batch_pass`) does, for one input file and its ledger:

1. **Reconcile**: a submission whose intent was journaled but whose batch id was not (the process died
   between `batches.create` and the journal write) is looked up among the account's batches by the
   intent id in its `metadata`. Found, it is recorded; not found, it never existed and its items are
   pending again. Nothing is created twice, so nothing is paid twice.
2. **Collect**: every open batch is retrieved; a terminal one (completed, failed, expired, cancelled)
   has its output and error files downloaded, streamed to disk, and every line recorded in the same
   ledger as sync mode, one row per `custom_id`. A batch collected twice (a crash before the journal
   said so) records nothing twice: rows already holding that batch's answer are skipped.
3. **Submit**: items with no row yet, and items whose last row failed in a way another try can fix
   (429, 5xx, timeouts, an expired or cancelled batch, an answer missing from the output), are uploaded
   as new batches — one *round* per pass once every open batch is collected, at most `max_rounds`.
   Failures the same request would meet again (a 400, a batch failing validation) are the answer.
   Files are split per model (a batch serves one model) and at the API's limits of 50,000 requests
   and 200 MB. Before each upload an *intent* is journaled and fsynced; the batch carries the intent
   id, the partition and the round in its `metadata`.

The journal (`<ledger>.batches.jsonl`, beside the ledger) is append-only JSONL: `intent`, `uploaded`,
`created`, `collected` and `abandoned` events keyed by intent id. A lock file keeps two processes from
working on one partition at once.

Nothing here holds a step while batches run: a pass returns at once with the batches still open, and
`inference_batch_sensor` requests the partition's next run when they are all terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletion

from ai_assets.lib.llm.items import InferenceItem, OutputRow
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.openai_call import completion_result
from ai_assets.lib.llm.retry import MalformedResponseError, failure_for_status, redact, short_message

if TYPE_CHECKING:
    import openai

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# The OpenAI Batch API's limits per input file.
MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 200 * 1024 * 1024
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Published as 50 % of the synchronous price (OpenAI; Azure OpenAI's global batch likewise).
DEFAULT_DISCOUNT = 0.5
# The metadata keys a batch carries (OpenAI allows 16 keys, values up to 512 characters).
META_INTENT = "ai_assets_intent"
META_PARTITION = "ai_assets_partition"
META_INPUT = "ai_assets_input"
META_ROUND = "ai_assets_round"
META_PART = "ai_assets_part"
# Failures another round can fix. The rest (bad_request, auth_error, a batch that failed validation, ...)
# would fail the same way again: they are the item's answer, as in sync mode.
RESUBMITTED_KINDS = frozenset(
    {
        "rate_limited",
        "server_error",
        "timeout",
        "conflict",
        "connection",
        "malformed_response",
        "batch_expired",
        "batch_cancelled",
        "batch_token_limit_exceeded",
        "not_returned",
    }
)
# A batch that failed validation for one of these codes may pass later (the account's enqueued-token
# quota frees up as other batches finish); any other validation failure is the same next time.
_TRANSIENT_VALIDATION_CODES = frozenset({"token_limit_exceeded"})
_KIND = re.compile(r"[a-z_]+")
# How far before an intent to look when listing batches for it (clocks of client and API differ).
_LIST_SLACK_S = 3600


class BatchApiError(RuntimeError):
    """A Batch API call failed in a way this pass cannot get past; what is already recorded stays."""


class BatchJournalBusyError(RuntimeError):
    """Another process is working on this partition's batches."""


def error_kind(error: str | None) -> str:
    """The kind of a recorded error (`server_error (HTTP 500): ...` -> `server_error`); "" for none."""
    match = _KIND.match(error or "")
    return match.group(0) if match else ""


def needs_request(row: OutputRow | None) -> bool:
    """Whether an item must be (re)submitted: no row yet, or a failure another try can fix."""
    return row is None or (not row.succeeded and error_kind(row.error) in RESUBMITTED_KINDS)


# --- the journal ---------------------------------------------------------------------------------


@dataclass
class Submission:
    """One batch (or the intent to create it), folded from the journal's events."""

    intent: str
    round: int
    part: int
    model: str
    ids: list[str]
    requests: int
    bytes: int
    at: float  # time.time() of the intent
    file_id: str | None = None
    batch_id: str | None = None
    abandoned: str | None = None  # why the batch was never created
    collected: dict[str, Any] | None = None  # the collection's counts and final status
    status: str | None = None  # the last status seen in this process (not journaled)

    @property
    def open(self) -> bool:
        """Created and not collected yet."""
        return self.batch_id is not None and self.collected is None

    @property
    def unresolved(self) -> bool:
        """An intent that may or may not have become a batch (the process died around `create`)."""
        return self.batch_id is None and self.abandoned is None

    @property
    def in_flight(self) -> bool:
        """Open, or unresolved: a batch that may be running at the provider."""
        return self.open or self.unresolved

    @property
    def final_status(self) -> str | None:
        return self.collected["status"] if self.collected else self.status


class BatchJournal:
    """The append-only record of a partition's submissions; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @staticmethod
    def beside(ledger_path: Path) -> BatchJournal:
        return BatchJournal(ledger_path.with_name(ledger_path.name.removesuffix(".jsonl") + ".batches.jsonl"))

    def load(self) -> list[Submission]:
        """Every submission in intent order. A torn last line (a crash mid-write) is ignored."""
        try:
            lines = self.path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return []
        subs: dict[str, Submission] = {}
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
                kind, intent = event["event"], event["intent"]
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):
                    break
                raise ValueError(f"{self.path}:{number}: not a journal event ({exc})") from exc
            if kind == "intent":
                subs[intent] = Submission(
                    intent=intent,
                    round=event["round"],
                    part=event["part"],
                    model=event["model"],
                    ids=event["ids"],
                    requests=len(event["ids"]),
                    bytes=event["bytes"],
                    at=event["at"],
                )
                continue
            sub = subs.get(intent)
            if sub is None:
                raise ValueError(f"{self.path}:{number}: {kind} event for unknown intent {intent}")
            if kind == "uploaded":
                sub.file_id = event["file_id"]
            elif kind == "created":
                sub.batch_id = event["batch_id"]
            elif kind == "abandoned":
                sub.abandoned = event["reason"]
            elif kind == "collected":
                sub.collected = event["counts"]
        return list(subs.values())

    def append(self, event: dict[str, Any]) -> None:
        """One event, on disk (fsynced) before this returns: the journal is what a crash leaves."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(event, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the partition's batch lock, or raise `BatchJournalBusyError` at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise BatchJournalBusyError(
                    f"another process holds {lock_path}: a run of this partition is already submitting or "
                    "collecting its batches; let it finish"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# --- one pass ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOptions:
    partition: str
    input_digest: str  # the input file's content hash (its first 16 hex name the ledger)
    default_model: str
    max_rounds: int = 3
    max_requests: int = MAX_REQUESTS_PER_BATCH
    max_bytes: int = MAX_BYTES_PER_BATCH
    secrets: Sequence[str] = ()


@dataclass
class BatchPass:
    """What one pass did, and where the partition's batches stand."""

    submissions: list[Submission]  # every submission of the input, in intent order
    collected: list[Submission] = field(default_factory=list)
    submitted: list[Submission] = field(default_factory=list)
    recovered: list[Submission] = field(default_factory=list)  # found again by their intent id
    resubmitted_items: int = 0  # items sent again after a failed or missing answer
    rows_recorded: int = 0
    gave_up: int = 0  # items with no answer after max_rounds, recorded as failed

    @property
    def open(self) -> list[Submission]:
        return [s for s in self.submissions if s.open]

    @property
    def finished(self) -> bool:
        """Nothing open: every item has its row (the pass only ends so when that holds)."""
        return not self.open

    @property
    def rounds(self) -> int:
        return max((s.round for s in self.submissions if s.abandoned is None), default=0)

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sub in self.submissions:
            if sub.abandoned is None:
                status = sub.final_status or "unknown"
                counts[status] = counts.get(status, 0) + 1
        return counts


def batch_pass(
    client: openai.OpenAI,
    items: Sequence[InferenceItem],
    ledger: ResultLedger,
    journal: BatchJournal,
    options: BatchOptions,
    *,
    log: Callable[[str], None] = lambda message: None,
    work_dir: Path | None = None,
) -> BatchPass:
    """Reconcile, collect and submit once; see the module docstring. `ledger` must be open.

    Raises `BatchApiError` when an upload or `create` is refused (what was recorded before stays, and
    the next pass goes on from there), and `BatchJournalBusyError` when another process is at work.
    """
    with journal.locked():
        subs = journal.load()
        result = BatchPass(submissions=subs)
        known = {item.id for item in items}
        stray = sorted({i for s in subs for i in s.ids} - known)
        if stray:
            # Sent when they were valid; a stricter limit since (INFERENCE_MAX_PROMPT_CHARS) rejects them now.
            log(f"{len(stray)} submitted ids are no longer valid input lines; answers ignored: {stray[:5]}")
        _reconcile(client, journal, result, options, log)
        _collect(client, items, ledger, journal, result, options, log, work_dir or journal.path.parent)
        _submit(client, items, ledger, journal, result, options, log)
        return result


def _reconcile(
    client: openai.OpenAI, journal: BatchJournal, result: BatchPass, options: BatchOptions, log: Callable[[str], None]
) -> None:
    unresolved = [s for s in result.submissions if s.unresolved]
    if not unresolved:
        return
    wanted = {s.intent: s for s in unresolved}
    oldest = min(s.at for s in unresolved) - _LIST_SLACK_S
    # Listed newest first: stop at batches older than the oldest intent.
    for batch in client.batches.list(limit=100):
        if batch.created_at < oldest or not wanted:
            break
        sub = wanted.pop((batch.metadata or {}).get(META_INTENT, ""), None)
        if sub is not None:
            sub.batch_id = batch.id
            sub.status = batch.status
            journal.append({"event": "created", "intent": sub.intent, "batch_id": batch.id, "recovered": True})
            result.recovered.append(sub)
            log(
                f"Found batch {batch.id} (round {sub.round}, part {sub.part}) created before a crash; not created again"
            )
    for sub in wanted.values():
        sub.abandoned = "never created (no batch carries its intent id)"
        journal.append({"event": "abandoned", "intent": sub.intent, "reason": sub.abandoned})
        if sub.file_id:  # uploaded, never used: not left in the provider's storage
            _delete_quietly(client, sub.file_id)
        log(f"Round {sub.round} part {sub.part} was never created (a crash): its {sub.requests} items go again")


def _collect(
    client: openai.OpenAI,
    items: Sequence[InferenceItem],
    ledger: ResultLedger,
    journal: BatchJournal,
    result: BatchPass,
    options: BatchOptions,
    log: Callable[[str], None],
    work_dir: Path,
) -> None:
    by_id = {item.id: item for item in items}
    rows: dict[str, OutputRow] | None = None  # the ledger, read once a batch is done, kept up to date below
    for sub in [s for s in result.submissions if s.open]:
        assert sub.batch_id is not None
        batch = client.batches.retrieve(sub.batch_id)
        sub.status = batch.status
        counts = batch.request_counts
        done = f"{counts.completed} ok, {counts.failed} failed of {counts.total}" if counts else "no counts yet"
        if batch.status not in TERMINAL:
            log(f"Batch {sub.batch_id} (round {sub.round}, part {sub.part}): {batch.status}, {done}")
            continue
        if rows is None:
            rows = ledger.load()
        ids = [i for i in sub.ids if i in by_id]
        mine = set(ids)
        answered: dict[str, OutputRow] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                for line in _download_lines(client, file_id, work_dir / f"{sub.batch_id}.{file_id}.part"):
                    row = _row_from_line(line, sub, mine, by_id, rows, options)
                    if row is not None:
                        answered[row.id] = row
        for item_id in ids:
            if item_id not in answered:
                answered[item_id] = _unanswered_row(batch, sub, by_id[item_id], rows.get(item_id), options)
        recorded = 0
        for item_id in ids:
            current = rows.get(item_id)
            # Already collected from this batch before a crash, or answered elsewhere since: not again.
            if current is not None and (current.batch_id == sub.batch_id or current.succeeded):
                continue
            ledger.append(answered[item_id])
            rows[item_id] = answered[item_id]
            recorded += 1
        ledger.sync()
        ok = sum(1 for i in ids if answered[i].succeeded)
        sub.collected = {"status": batch.status, "succeeded": ok, "failed": len(ids) - ok, "recorded": recorded}
        journal.append({"event": "collected", "intent": sub.intent, "batch_id": sub.batch_id, "counts": sub.collected})
        result.collected.append(sub)
        result.rows_recorded += recorded
        log(
            f"Batch {sub.batch_id} (round {sub.round}, part {sub.part}) {batch.status}: {ok} answered, "
            f"{len(ids) - ok} failed; {recorded} rows recorded"
        )


def _download_lines(client: openai.OpenAI, file_id: str, spool: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of a result file, streamed to `spool` first (output files reach gigabytes)."""
    spool.parent.mkdir(parents=True, exist_ok=True)
    try:
        with client.files.with_streaming_response.content(file_id) as response, spool.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
        with spool.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError as exc:
                    raise BatchApiError(f"result file {file_id}, line {number}: not JSON ({exc})") from exc
                if isinstance(line, dict):
                    yield line
    finally:
        spool.unlink(missing_ok=True)


def _row_from_line(
    line: dict[str, Any],
    sub: Submission,
    mine: Collection[str],
    by_id: Mapping[str, InferenceItem],
    rows: Mapping[str, OutputRow],
    options: BatchOptions,
) -> OutputRow | None:
    item_id = line.get("custom_id")
    if not isinstance(item_id, str) or item_id not in mine:
        return None  # not one of this batch's requests: nothing of ours to record
    item = by_id[item_id]
    previous = rows.get(item_id)
    base = {
        "id": item_id,
        "model": item.model or sub.model,
        "attempts": (previous.attempts if previous else 0) + 1,
        "metadata": item.metadata,
        "request_id": line.get("id") if isinstance(line.get("id"), str) else None,
        "batch_id": sub.batch_id,
    }
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200:
        # Read exactly as a sync answer is: the same shape checks, the same defaults for what is missing.
        body = response.get("body")
        try:
            if not isinstance(body, dict):
                raise MalformedResponseError(f"response body is {type(body).__name__}, not a chat completion")
            result = completion_result(ChatCompletion.construct(**body), base["model"])
        except MalformedResponseError as exc:
            return OutputRow(**base, error=f"malformed_response: {exc}")
        return OutputRow(
            **{**base, "model": result.model},
            output=_scrubbed(result.output, options.secrets),
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        detail = (response.get("body") or {}).get("error") if isinstance(response.get("body"), dict) else None
        detail = detail if isinstance(detail, dict) else {}
        message = short_message(detail.get("message") or f"HTTP {response['status_code']}", options.secrets)
        code = detail.get("code") if isinstance(detail.get("code"), str) else None
        return OutputRow(**base, error=failure_for_status(response["status_code"], message, code).describe())
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = short_message(error.get("message") or code, options.secrets)
        kind = code if code.startswith("batch_") else f"batch_{code}"
        return OutputRow(**base, error=f"{kind}: {message}")
    return OutputRow(**base, error="malformed_response: a result line with neither a response nor an error")


def _scrubbed(text: str, secrets: Sequence[str]) -> str:
    """An answer as recorded: whole, with the key scrubbed should a model or proxy echo it (as sync mode)."""
    return redact(text, secrets) if secrets else text


def _unanswered_row(
    batch: Any, sub: Submission, item: InferenceItem, previous: OutputRow | None, options: BatchOptions
) -> OutputRow:
    """The row of an item a terminal batch returned no line for."""
    attempts = (previous.attempts if previous else 0) + 1
    common = {
        "id": item.id,
        "model": item.model or sub.model,
        "attempts": attempts,
        "metadata": item.metadata,
        "batch_id": sub.batch_id,
    }
    if batch.status == "failed":
        errors = [e for e in ((batch.errors.data or []) if batch.errors else [])]
        code = next((e.code for e in errors if e.code), None) or "failed"
        detail = (
            "; ".join(f"{e.message}" + (f" (line {e.line})" if e.line else "") for e in errors[:3] if e.message)
            or "the batch failed validation"
        )
        kind = "batch_token_limit_exceeded" if code in _TRANSIENT_VALIDATION_CODES else "batch_failed"
        return OutputRow(**common, error=f"{kind}: {code}: {short_message(detail, options.secrets)}")
    if batch.status in ("expired", "cancelled"):
        return OutputRow(**common, error=f"batch_{batch.status}: the batch ended {batch.status} before answering it")
    return OutputRow(**common, error=f"not_returned: batch {sub.batch_id} ({batch.status}) has no line for it")


def _submit(
    client: openai.OpenAI,
    items: Sequence[InferenceItem],
    ledger: ResultLedger,
    journal: BatchJournal,
    result: BatchPass,
    options: BatchOptions,
    log: Callable[[str], None],
) -> None:
    rows = ledger.load()
    live = [s for s in result.submissions if s.abandoned is None]
    busy = any(s.open for s in live)
    in_flight = {i for s in live if s.open for i in s.ids}
    ever_sent = {i for s in live for i in s.ids}
    pending = [item for item in items if item.id not in in_flight and needs_request(rows.get(item.id))]
    # Never sent (the first pass, or parts whose upload was refused or never created): they go now, in the
    # current round — a round is spent only on sending failed items again.
    fresh = [item for item in pending if item.id not in ever_sent]
    again = [item for item in pending if item.id in ever_sent]
    last_round = result.rounds
    batches: list[tuple[int, list[InferenceItem]]] = []
    if fresh:
        batches.append((max(last_round, 1), fresh))
    if again and not busy:  # the next round waits until the whole current one is collected
        if last_round + 1 > options.max_rounds:
            _give_up(again, rows, ledger, options, result, log)
        else:
            batches.append((last_round + 1, again))
            result.resubmitted_items += len(again)
    for round_number, group in batches:
        first_part = 1 + max((s.part for s in result.submissions if s.round == round_number), default=0)
        parts = plan_parts(group, options.default_model, options.max_requests, options.max_bytes)
        for part, (model, lines) in enumerate(parts, start=first_part):
            sub = _create_one(client, journal, options, round_number, part, model, lines, log)
            result.submissions.append(sub)
            result.submitted.append(sub)


def _give_up(
    pending: Sequence[InferenceItem],
    rows: Mapping[str, OutputRow],
    ledger: ResultLedger,
    options: BatchOptions,
    result: BatchPass,
    log: Callable[[str], None],
) -> None:
    """After `max_rounds`: each item's last failure is its answer (an item without a row gets one)."""
    for item in pending:
        if item.id not in rows:
            ledger.append(
                OutputRow(
                    id=item.id,
                    error=f"not_answered: no answer after {options.max_rounds} batch rounds",
                    model=item.model or options.default_model,
                    metadata=item.metadata,
                )
            )
            result.gave_up += 1
    ledger.sync()
    log(
        f"{len(pending)} items still unanswered after {options.max_rounds} rounds (INFERENCE_BATCH_MAX_ROUNDS): "
        "their last failure is their answer; a run in sync mode, or with more rounds, tries them again"
    )


def request_line(item: InferenceItem, default_model: str) -> bytes:
    """One line of a Batch API input file for `item`."""
    body = {"custom_id": item.id, "method": "POST", "url": ENDPOINT, "body": item.request_kwargs(default_model)}
    return (json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def plan_parts(
    items: Sequence[InferenceItem], default_model: str, max_requests: int, max_bytes: int
) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """Batch input files for `items`: one model each (a batch serves one), at most `max_requests`
    lines and `max_bytes` bytes each, in input order. Each part is `(model, [(id, line), ...])`."""
    if max_requests < 1 or max_bytes < 1:
        raise ValueError(f"batch limits must be positive (requests {max_requests}, bytes {max_bytes})")
    by_model: dict[str, list[InferenceItem]] = {}
    for item in items:
        by_model.setdefault(item.model or default_model, []).append(item)
    parts: list[tuple[str, list[tuple[str, bytes]]]] = []
    for model, group in by_model.items():
        current: list[tuple[str, bytes]] = []
        size = 0
        for item in group:
            line = request_line(item, default_model)
            if len(line) > max_bytes:
                raise ValueError(
                    f"line {item.line} (id {item.id!r}) is {len(line):,} bytes as a batch request, over the "
                    f"{max_bytes:,}-byte limit of a batch input file"
                )
            if current and (len(current) >= max_requests or size + len(line) > max_bytes):
                parts.append((model, current))
                current, size = [], 0
            current.append((item.id, line))
            size += len(line)
        if current:
            parts.append((model, current))
    return parts


def _create_one(
    client: openai.OpenAI,
    journal: BatchJournal,
    options: BatchOptions,
    round_number: int,
    part: int,
    model: str,
    lines: Sequence[tuple[str, bytes]],
    log: Callable[[str], None],
) -> Submission:
    import openai

    data = b"".join(line for _, line in lines)
    sub = Submission(
        intent=uuid.uuid4().hex,
        round=round_number,
        part=part,
        model=model,
        ids=[item_id for item_id, _ in lines],
        requests=len(lines),
        bytes=len(data),
        at=time.time(),
    )
    # The intent is on disk before anything is sent: whatever happens next, a later pass knows to look.
    journal.append(
        {
            "event": "intent",
            "intent": sub.intent,
            "round": round_number,
            "part": part,
            "model": model,
            "ids": sub.ids,
            "bytes": sub.bytes,
            "at": sub.at,
            "partition": options.partition,
        }
    )
    what = f"round {round_number} part {part} ({sub.requests} requests, {sub.bytes:,} bytes, model {model})"
    try:
        uploaded = client.files.create(
            file=(f"{options.partition}.{options.input_digest[:16]}.r{round_number}.p{part}.jsonl", data),
            purpose="batch",
        )
    except openai.APIStatusError as exc:
        # Refused: no file, so certainly no batch. The items stay pending for the next pass.
        reason = f"upload refused: HTTP {exc.status_code}: {_api_message(exc, options.secrets)}"
        journal.append({"event": "abandoned", "intent": sub.intent, "reason": reason})
        raise BatchApiError(f"{options.partition}: uploading {what} failed: {reason}") from exc
    sub.file_id = uploaded.id
    journal.append({"event": "uploaded", "intent": sub.intent, "file_id": uploaded.id})
    metadata = {
        META_INTENT: sub.intent,
        META_PARTITION: options.partition[:512],
        META_INPUT: options.input_digest[:16],
        META_ROUND: str(round_number),
        META_PART: str(part),
    }
    try:
        # No SDK retry: a retried `create` after a lost answer would make a second, paid batch. A lost
        # answer leaves the intent unresolved, and the next pass finds the batch by its metadata.
        batch = client.with_options(max_retries=0).batches.create(
            input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW, metadata=metadata
        )
    except openai.APIStatusError as exc:
        reason = f"create refused: HTTP {exc.status_code}: {_api_message(exc, options.secrets)}"
        journal.append({"event": "abandoned", "intent": sub.intent, "reason": reason})
        _delete_quietly(client, uploaded.id)
        raise BatchApiError(f"{options.partition}: creating the batch of {what} failed: {reason}") from exc
    sub.batch_id, sub.status = batch.id, batch.status
    journal.append({"event": "created", "intent": sub.intent, "batch_id": batch.id})
    log(f"Submitted batch {batch.id}: {what}")
    return sub


def _delete_quietly(client: openai.OpenAI, file_id: str) -> None:
    """Delete an input file no batch uses; a failure only leaves it in the provider's storage."""
    import openai

    with contextlib.suppress(openai.APIError):
        client.files.delete(file_id)


def _api_message(exc: openai.APIStatusError, secrets: Sequence[str]) -> str:
    """The API's own error message (the SDK's `message` wraps the whole body in "Error code: ...")."""
    body = exc.body
    text = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else exc.message
    return short_message(text, secrets)


def batch_ids_digest(subs: Sequence[Submission]) -> str:
    """A short, stable name for a set of batches (the sensor's run key)."""
    return hashlib.sha256(",".join(sorted(s.batch_id or s.intent for s in subs)).encode()).hexdigest()[:12]

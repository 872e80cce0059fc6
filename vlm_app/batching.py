"""Batched generation: several prepared requests of one model in one left-padded `generate`.

    streams = stream_batch(adapter, [prepared_a, prepared_b], max_new_tokens=[64, 128])
    for piece in streams[0]: ...          # each row streams, cancels and finishes on its own
    generations = generate_batch(adapter, [prepared_a, prepared_b], max_new_tokens=64)

Each family says how its inputs collate (`Adapter.collate`, built from `collate_rows` here); everything else lives
here once. Rows are left-padded, so every row's answer starts at the same step; a row that reaches its end of
answer, its own `max_new_tokens` or its cancel event leaves the batch at that step (one stopping criterion decides
per row and records the row's tokens, so a finished row's later tokens are never seen) and the others go on.
Greedy rows answer exactly as they would alone (fp32; tests/test_batching.py checks every family).

The request layer's part: `execute_batch` runs `service.Request`s in batches, grouping those whose sampling
settings match (`settings_key`: requests that cannot share a batch run alone), and sizing each batch by the memory
pre-flight (`batch_estimate`: every row counted at the batch's padded length).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import torch

from vlm_app import memory
from vlm_app.adapters.base import Generation, Prepared, Stream, Timings
from vlm_app.decoding import Decoding
from vlm_app.memory import MemoryEstimate, RequestShape

log = logging.getLogger("vlm_app.batching")
SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "seed")
ALONE_KEYS = ("repetition_penalty", "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs",
              "json_schema")  # decoding controls (`vlm_app.decoding`) work per call: such a request runs alone


# ---- collating inputs ----------------------------------------------------------------------------------------

def left_padded(rows: list[torch.Tensor], value) -> torch.Tensor:
    """(1, L_i) rows as one (B, max L) tensor, each row padded on the left with `value`."""
    length = max(row.shape[-1] for row in rows)
    return torch.cat([torch.nn.functional.pad(row, (length - row.shape[-1], 0), value=value) for row in rows])


def padded_cat(tensors: list[torch.Tensor], value) -> torch.Tensor:
    """Tensors joined along their first axis, every other axis padded at its end with `value` to the widest."""
    widest = [max(sizes) for sizes in zip(*(tensor.shape[1:] for tensor in tensors))]
    padded = []
    for tensor in tensors:
        pad = [amount for size, wide in reversed(list(zip(tensor.shape[1:], widest))) for amount in (0, wide - size)]
        padded.append(torch.nn.functional.pad(tensor, pad, value=value) if any(pad) else tensor)
    return torch.cat(padded)


def sequence_rules(adapter, *token_types: str) -> dict:
    """`collate_rows`' sequence rules of a transformers processor: ids padded with the tokenizer's pad token,
    the attention mask and the named per-token type tensors with 0."""
    tokenizer = adapter.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {"input_ids": pad, "attention_mask": 0, **dict.fromkeys(token_types, 0)}


def collate_rows(inputs_list: list[dict], sequences: dict, stacked: dict | None = None,
                 concatenated: dict | None = None) -> dict:
    """One batch of model inputs from per-request inputs (each of batch size 1), by the family's rules:
    `sequences` (name -> pad value): per-token tensors (1, L), left-padded; `stacked` (name -> pad value): per-row
    tensors (1, N, ...), stacked with every axis padded at its end (a row without the key gets N = 0: all
    padding); `concatenated` (name -> pad value): per-item tensors (items, ...) of the rows' media in batch order,
    joined with their other axes padded at the end. An input no rule names is a bug (it would be mis-batched)."""
    stacked, concatenated = stacked or {}, concatenated or {}
    names = list(dict.fromkeys(name for inputs in inputs_list for name in inputs))
    unknown = [name for name in names if name not in {**sequences, **stacked, **concatenated}]
    if unknown:
        raise ValueError(f"no batching rule for model input(s) {', '.join(unknown)}")
    batch = {}
    for name in names:
        present = [inputs[name] for inputs in inputs_list if name in inputs]
        if name in sequences:
            batch[name] = left_padded([inputs[name] for inputs in inputs_list], sequences[name])
        elif name in stacked:
            empty = present[0].new_zeros((1, 0, *present[0].shape[2:]))
            batch[name] = padded_cat([inputs.get(name, empty) for inputs in inputs_list], stacked[name])
        elif isinstance(present[0], torch.Tensor):
            batch[name] = padded_cat(present, concatenated[name])
        else:  # a list per request (a processor's per-item values)
            batch[name] = [value for values in present for value in values]
    return batch


# ---- one batched generate ------------------------------------------------------------------------------------

@dataclass
class _Row:
    """One request of a batch: its tokens and their times, its own budget and cancel flag, and its pieces queue
    (None ends it)."""

    prepared: Prepared
    max_new_tokens: int
    cancel: threading.Event
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    pieces: queue.Queue = field(default_factory=queue.Queue)
    finished: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    generation: Generation | None = None
    error: BaseException | None = None


class _RowStops:
    """The batch's stopping criterion, called by `generate` after every step: each unfinished row takes its new
    token (then streams it), and finishes at its end-of-answer token, its `max_new_tokens` or its cancel flag;
    a finished row gets its `Generation` at once and is stopped in the batch (transformers pads it from then on)."""

    def __init__(self, adapter, rows: list[_Row], end_ids: set[int], started: float):
        self.adapter, self.rows, self.end_ids, self.started = adapter, rows, end_ids, started

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        now = time.perf_counter()
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if row.finished.is_set():
                continue
            row.token_ids.append(token)
            row.token_times.append(now)
            row.pieces.put([token])
            row.cancelled = row.cancel.is_set()
            if row.cancelled or token in self.end_ids or len(row.token_ids) >= row.max_new_tokens:
                self.finish(row)
        return torch.tensor([row.finished.is_set() for row in self.rows], device=input_ids.device)

    def finish(self, row: _Row, error: BaseException | None = None) -> None:
        """The row's `Generation` (timed as one request's: prefill until its first token, decode until its
        last), or its error; then its stream ends."""
        times, device = row.token_times, str(self.adapter.device)
        timings = Timings(preprocess_s=row.prepared.timings.get("preprocess_s", 0.0),
                          prefill_s=(times[0] - self.started) if times else time.perf_counter() - self.started,
                          decode_s=(times[-1] - times[0]) if times else 0.0, new_tokens=len(row.token_ids),
                          peak_memory_bytes=memory.peak_bytes(device))
        row.error = error
        row.generation = Generation(text=self.adapter.decode(row.token_ids), token_ids=row.token_ids,
                                    timings=timings, cancelled=row.cancelled)
        row.finished.set()
        row.pieces.put(None)


class RowStream(Stream):
    """One row of a batched generation as a `Stream`: its text pieces, then `.generation`. Closing it (or setting
    its cancel event) takes this row out of the batch within one token; the other rows go on."""

    def __init__(self, adapter, row: _Row):  # the batch's thread generates: this stream only reads its row
        self.cancel = row.cancel
        self.decoding = Decoding(adapter, row.max_new_tokens)  # none: a request with decoding controls runs alone
        self._adapter = adapter
        self._pieces = row.pieces
        self._row = row

    @property
    def generation(self) -> Generation | None:
        return self._row.generation if self._row.finished.is_set() else None

    @property
    def error(self) -> BaseException | None:
        return self._row.error

    def close(self) -> None:
        self.cancel.set()
        self._row.finished.wait()


def stream_batch(adapter, prepared: list[Prepared], max_new_tokens: int | list[int] = 256,
                 cancels: list[threading.Event | None] | None = None, do_sample: bool | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 ended: threading.Event | None = None) -> list[RowStream]:
    """Start one `generate` over all `prepared` (a background thread) and return one `RowStream` per row.
    `max_new_tokens`: one budget for all or one per row; `cancels`: one event per row (None: its own). The
    sampling settings are the batch's: a seeded sampled row gets other draws than it would alone. `ended` is set
    once `generate` has returned."""
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prepared)
    cancels = cancels or [None] * len(prepared)
    rows = [_Row(item, budget, cancel or threading.Event()) for item, budget, cancel in zip(prepared, budgets, cancels)]
    options = adapter._generate_options(max(budgets), do_sample, temperature, top_p, seed, {})
    threading.Thread(target=_generate_rows, args=(adapter, rows, options, ended), daemon=True).start()
    return [RowStream(adapter, row) for row in rows]


def generate_batch(adapter, prepared: list[Prepared], max_new_tokens: int | list[int] = 256,
                   cancels: list[threading.Event | None] | None = None, **sampling) -> list[Generation]:
    """`stream_batch` run to its end: one `Generation` per row, in order."""
    streams = stream_batch(adapter, prepared, max_new_tokens, cancels, **sampling)
    for stream in streams:
        for _ in stream:
            pass
    return [stream.generation for stream in streams]


@torch.inference_mode()
def _generate_rows(adapter, rows: list[_Row], options: dict, ended: threading.Event | None) -> None:
    seed = options.pop("_seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    config = adapter.model.generation_config
    end_ids = config.eos_token_id
    end_ids = set(end_ids if isinstance(end_ids, list) else [] if end_ids is None else [end_ids])
    device = str(adapter.device)
    memory.reset_peak(device)
    stops = _RowStops(adapter, rows, end_ids, time.perf_counter())
    try:
        inputs = adapter._to_device(adapter.collate([row.prepared.inputs for row in rows]))
        pad = config.pad_token_id if config.pad_token_id is not None else next(iter(end_ids), 0)
        adapter.model.generate(**inputs, stopping_criteria=[stops], pad_token_id=pad, **options)
        error = None
    except BaseException as failure:  # every row still running gets it (the consumer raises it)
        error = failure
    for row in rows:
        if not row.finished.is_set():
            stops.finish(row, error)
    if ended is not None:
        ended.set()


# ---- which requests share a batch, and how many fit ----------------------------------------------------------

def settings_key(generation: dict) -> tuple | None:
    """Requests with equal keys may share a batch; None: this request runs alone (a decoding control, or a seed
    with sampling, whose draws a batch would change)."""
    if any(generation.get(key) is not None for key in ALONE_KEYS):
        return None
    sampled = generation.get("do_sample")
    sampled = (generation.get("temperature") or 0) > 0 if sampled is None else sampled
    if sampled and generation.get("seed") is not None:
        return None
    if not sampled:
        return ("greedy",)
    return ("sampled", generation.get("temperature") or 1.0, generation.get("top_p", 1.0))


def batch_estimate(adapter, shapes: list[RequestShape], ahead: RequestShape | None = None) -> MemoryEstimate:
    """The peak of one batch of requests of these shapes: the weights and the runtime once, every row at the
    batch's padded prompt length and its longest answer (the vision encoder sees every row's media in one call),
    plus the media of a request prepared `ahead` while the batch generates."""
    length = max(shape.prompt_tokens for shape in shapes)
    answer = max(shape.max_new_tokens for shape in shapes)
    rows = [adapter.memory_estimate(replace(shape, text_tokens=length - shape.visual_tokens, max_new_tokens=answer))
            for shape in shapes]
    media = sum(row.media for row in rows) + (ahead.media_bytes if ahead is not None else 0)
    return MemoryEstimate(weights=rows[0].weights, overhead=rows[0].overhead, media=media,
                          vision=sum(row.vision for row in rows), prefill=sum(row.prefill for row in rows),
                          decode=sum(row.decode for row in rows))


def fitting_batches(items: list, shape_of: Callable, fits: Callable[[list], bool], max_batch: int) -> list[list]:
    """`items` cut in order into batches of at most `max_batch` whose shapes `fits` (a lone item always forms a
    batch: its own pre-flight has spoken)."""
    batches: list[list] = []
    for item in items:
        if batches and len(batches[-1]) < max_batch and fits([shape_of(one) for one in batches[-1] + [item]]):
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


# ---- the request layer in batches ----------------------------------------------------------------------------

def execute_batch(adapter, requests: Iterable, cancels: list[threading.Event | None] | None = None,
                  max_batch: int = 8, on_record: Callable[[int, dict], None] | None = None,
                  on_text: Callable[[int, str], None] | None = None) -> list[dict]:
    """The records of `requests` (`service.Request`s for one model), as `service.execute` makes them one by one,
    generated in batches of at most `max_batch` consecutive requests whose sampling settings match
    (`settings_key`) and that fit the memory limit together. While a batch generates, the next request is prepared
    (one ahead: its media decoded, resized and processed), and the batch's pre-flight counts it.
    `on_record(index, record)` as each record is done, `on_text(index, piece)` as answers stream."""
    requests = list(requests)
    cancels = list(cancels or [None] * len(requests))
    records: list[dict | None] = [None] * len(requests)
    position = 0  # the next request to prepare
    lock = threading.Lock()  # rows finish in their own threads: `on_record` sees one record at a time

    def done(index: int, record: dict) -> None:
        with lock:
            records[index] = record
            if on_record is not None:
                on_record(index, record)

    def prepare_next() -> tuple | None:
        nonlocal position
        if position == len(requests):
            return None
        position += 1
        return position - 1, prepared_run(adapter, requests[position - 1], cancels[position - 1])

    ahead = prepare_next()
    while ahead is not None:
        batch, ahead = _next_batch(ahead, prepare_next, max_batch, done)
        runs = dict(batch)
        one_ahead = ahead is not None or position < len(requests)
        for part in split_by_memory(adapter, list(runs.values()), list(runs), max_batch, one_ahead):
            finish = start_rows(adapter, [runs[index] for index in part], part, done, on_text)
            if ahead is None:
                ahead = prepare_next()  # while the model generates
            finish()
    return records


def _next_batch(first: tuple, prepare_next: Callable[[], tuple | None], max_batch: int,
                done: Callable[[int, dict], None]) -> tuple[list[tuple], tuple | None]:
    """(the prepared (index, run) pairs of the next batch, starting with `first`; the prepared pair that starts
    the batch after it, or None). A run whose preparation failed is done at once (its record has the error)."""
    batch: list[tuple] = []
    key = None
    item = first
    while item is not None:
        index, run = item
        if run.error is not None:
            done(index, run.record)
        else:
            own = settings_key(run.request.generation) if max_batch > 1 else None
            if batch and (own is None or own != key):
                return batch, item
            batch.append(item)
            key = own
            if own is None or len(batch) == max_batch:
                return batch, None
        item = prepare_next()
    return batch, None


def prepared_run(adapter, request, cancel: threading.Event | None = None):
    """A prepared `service.Run`; a user mistake becomes its error (its record says so)."""
    from vlm_app.errors import VlmAppError
    from vlm_app.service import Run

    run = Run(adapter, request, cancel)
    try:
        run.prepare()
    except VlmAppError as error:
        run.error = error
    return run


def split_by_memory(adapter, runs: list, indices: list, max_batch: int, one_ahead: bool = False) -> list[list]:
    """`indices` (of prepared `runs`, in the same order) cut into batches whose `batch_estimate` stays under the
    runs' memory limit (none: only `max_batch` cuts). `one_ahead`: a request is prepared while each batch
    generates; its media count as much as the batch's largest."""
    limit = min((run.limit for run in runs if run.limit is not None), default=None)
    shapes = {index: adapter.prepared_shape(run.prepared, run.request.max_new_tokens)
              for index, run in zip(indices, runs)}
    ahead = max(shapes.values(), key=lambda shape: shape.media_bytes) if one_ahead and shapes else None
    fits = (lambda batch: True) if limit is None else (
        lambda batch: batch_estimate(adapter, batch, ahead).total <= limit)
    return fitting_batches(indices, shapes.__getitem__, fits, max_batch)


def start_rows(adapter, runs: list, indices: list, done: Callable[[int, dict], None],
               on_text: Callable[[int, str], None] | None = None) -> Callable[[], None]:
    """Start generating prepared runs as one batch (a lone run: its own stream, every generation option
    honoured). Each run reads its own row (stop strings, cancel) in its own thread and `done(index, record)` is
    called as each finishes. Returns the function that waits for them all (and raises a bug of any)."""
    ended = threading.Event()  # set once the batch's generate has returned
    if len(runs) > 1:
        streams = stream_batch(adapter, [run.prepared for run in runs], [run.request.max_new_tokens for run in runs],
                               [run.cancel for run in runs], ended=ended, **_sampling(runs[0]))
        for run, stream in zip(runs, streams):
            run.stream = stream
    failures: list[BaseException] = []

    def answer(run, index) -> None:
        try:
            done(index, run.execute(None if on_text is None else lambda piece: on_text(index, piece)))
        except BaseException as error:  # a bug: raised once every row has finished
            failures.append(error)

    threads = [threading.Thread(target=answer, args=(run, index), daemon=True) for run, index in zip(runs, indices)]
    for thread in threads:
        thread.start()

    def finish() -> None:
        for thread in threads:
            thread.join()
        if len(runs) > 1:
            ended.wait()
        if failures:
            raise failures[0]

    return finish


class Gatherer:
    """Requests prepared in many threads (a server's), generated together: each thread prepares its `service.Run`,
    then iterates it inside `with gatherer.turn(run, model):`. One batch generates at a time; the first run to
    wait for the next one leads it, waiting up to `wait_s` for more runs of the same model and sampling settings
    (up to `max_batch`, as many as the memory pre-flight allows); a run that must run alone gets a batch of its
    own (its own stream), and so does `alone()` (work that generates by itself, e.g. a chapters job). Cancel stays
    per run: a run whose client left leaves its batch within one token."""

    def __init__(self, max_batch: int, wait_s: float):
        self.max_batch, self.wait_s = max_batch, wait_s
        self._changed = threading.Condition()
        self._waiting: list[tuple] = []  # (turn, model, settings key or None: alone), in arrival order
        self._chosen: set = set()  # the waiting turns the batch now starting has taken
        self._members = 0  # turns of the generating batch not yet left
        self._ended: threading.Event | None = None  # set when the generating batch's `generate` returns
        self._coming: dict[str, int] = {}  # model -> requests preparing their inputs, soon to wait here

    @contextmanager
    def preparing(self, model: str):
        """Around a request's `prepare`: a batch's leader waits for it (as long as it prepares) to join."""
        with self._changed:
            self._coming[model] = self._coming.get(model, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._coming[model] -= 1
                self._changed.notify_all()

    def turn(self, run, model: str) -> "_Turn":
        return _Turn(self, run, model)

    def alone(self) -> "_Turn":
        return _Turn(self, None, None)

    def _enter(self, turn: "_Turn") -> None:
        key = settings_key(turn.run.request.generation) if turn.run is not None else None
        with self._changed:
            self._waiting.append((turn, turn.model, key))
            self._changed.notify_all()
            while turn not in self._chosen:
                if self._members == 0 and self._waiting[0][0] is turn:
                    self._lead(turn, key)
                else:
                    self._changed.wait()
            self._chosen.discard(turn)

    def _lead(self, leader: "_Turn", key) -> None:
        """Called holding the lock by the first waiting turn while nothing generates: gather (for `wait_s`, and
        while requests for its model are still preparing), then start."""
        deadline = time.monotonic() + self.wait_s
        while key is not None and len(self._peers(leader.model, key)) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0 and not self._coming.get(leader.model):
                break
            self._changed.wait(left if left > 0 else None)
        batch = [leader]
        if key is not None:
            peers = self._peers(leader.model, key)[:self.max_batch]
            runs = [turn.run for turn in peers]
            parts = split_by_memory(leader.run.adapter, runs, list(range(len(runs))), self.max_batch,
                                    one_ahead=True)  # a request prepares while the batch generates
            batch = [peers[index] for index in parts[0]]
        self._waiting = [entry for entry in self._waiting if entry[0] not in batch]
        self._members, self._ended = len(batch), None
        if len(batch) > 1:
            runs = [turn.run for turn in batch]
            log.info("%s: %d requests generate in one batch", leader.model, len(runs))
            self._ended = threading.Event()
            streams = stream_batch(leader.run.adapter, [run.prepared for run in runs],
                                   [run.request.max_new_tokens for run in runs], [run.cancel for run in runs],
                                   ended=self._ended, **_sampling(runs[0]))
            for run, stream in zip(runs, streams):
                run.stream = stream
        self._chosen.update(batch)
        self._changed.notify_all()

    def _peers(self, model: str, key) -> list:
        return [turn for turn, its_model, its_key in self._waiting if its_model == model and its_key == key]

    def _leave(self) -> None:
        with self._changed:
            self._members -= 1
            if self._members == 0 and self._ended is not None:
                self._ended.wait()  # the batch's generate has returned: the next may start
            self._changed.notify_all()


class _Turn:
    """One run's (or a lone job's) place in a `Gatherer`: entering waits for its batch, leaving frees it."""

    def __init__(self, gatherer: Gatherer, run, model: str | None):
        self.gatherer, self.run, self.model = gatherer, run, model

    def __enter__(self):
        self.gatherer._enter(self)
        return self.run

    def __exit__(self, *exc) -> None:
        if self.run is not None and self.run.stream is not None:
            self.run.cancel.set()  # a row its reader left (an error, a disconnect) leaves the batch
            self.run.stream.close()
        self.gatherer._leave()


def _sampling(run) -> dict:
    options = run.request.generate_options()
    return {key: options[key] for key in SAMPLING_KEYS if key in options}

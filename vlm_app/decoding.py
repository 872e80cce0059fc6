"""Per-request decoding controls, the same for every family (`Adapter._generate` adds them to `generate` as logits
processors, in this order, after transformers' own `repetition_penalty`):

    frequency_penalty, presence_penalty  OpenAI's additive penalties on the logits of the tokens generated so far:
                                          logit[j] -= count[j] * frequency + (count[j] > 0) * presence
    logprobs, top_logprobs               the log-probability of each generated token and of the `top_logprobs` most
                                          likely ones, in OpenAI's shape: log_softmax of the logits after the
                                          penalties, before the temperature, top_p and the JSON grammar (vLLM's
                                          "processed" log-probabilities without the sampling warpers)
    json_schema                          the answer is JSON valid under this schema: xgrammar masks every token the
                                          grammar does not allow. When the shortest way to a valid end (close
                                          the string, the array, the object) needs the rest of the answer budget,
                                          the answer takes it, so a model that would ramble, a random-weight one
                                          included, still ends with a valid document within the budget.

xgrammar is the structured-output engine vLLM, SGLang and TensorRT-LLM use by default: a compiled grammar with
per-token masks precomputed for the tokenizer, a plain transformers logits-processor integration, and CPU wheels.
Keywords it does not enforce (`UNENFORCED_KEYWORDS`) are refused rather than ignored, so an answer always validates.
"""

from __future__ import annotations

import json
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

MAX_TOP_LOGPROBS = 20
MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM's floor
CLOSING_MARGIN = 16  # at least, tokens kept in hand for what the model's next token may open
# from the first tried to the last, outside a string: end the object, the array, the number; the shortest values
CLOSING_TEXTS = ("}", "]", ",", "0", '""', '"', "[]", "{}", "null", "false", "true", "[", "{", ":")
UNENFORCED_KEYWORDS = ("not", "if", "then", "else", "uniqueItems", "multipleOf", "dependentRequired",
                       "dependentSchemas", "dependencies", "contains", "minContains", "maxContains",
                       "propertyNames", "unevaluatedProperties", "unevaluatedItems", "$dynamicRef")
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_ONES = ("items", "additionalProperties", "additionalItems")
JSON_OBJECT_SCHEMA = {"type": "object"}  # OpenAI's JSON mode: any JSON object


class SchemaError(ValueError):
    """A JSON schema that is not valid, or that uses a keyword the grammar cannot enforce."""


def check_json_schema(schema: Any) -> None:
    """SchemaError unless `schema` is a valid JSON schema (object) whose every keyword xgrammar enforces."""
    import jsonschema
    import xgrammar

    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema is an object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise SchemaError(f"not a valid JSON schema: {error.message}") from None
    _refuse_unenforced(schema, "schema")
    try:
        xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    except (RuntimeError, ValueError) as error:
        raise SchemaError(f"the schema cannot be enforced: {str(error).strip().splitlines()[-1][:300]}") from None


def _refuse_unenforced(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        return
    unenforced = [keyword for keyword in UNENFORCED_KEYWORDS if keyword in schema]
    if unenforced:
        raise SchemaError(f"{where} uses {unenforced[0]!r}, which constrained decoding cannot enforce; supported: "
                          "type, properties, required, additionalProperties, items, prefixItems, enum, const, anyOf, "
                          "oneOf, allOf, $ref/$defs, min/maxLength, pattern, format, min/maxItems, minimum/maximum")
    for name in SCHEMA_MAPS:
        for key, value in (schema.get(name) or {}).items():
            _refuse_unenforced(value, f"{where}.{name}.{key}")
    for name in SCHEMA_LISTS:
        for index, value in enumerate(schema.get(name) or []):
            _refuse_unenforced(value, f"{where}.{name}[{index}]")
    for name in SCHEMA_ONES:
        _refuse_unenforced(schema.get(name), f"{where}.{name}")


@dataclass
class Vocabulary:
    """A tokenizer as xgrammar sees it, for one logits width: each token's bytes, the grammar compiler, the tokens
    JSON text may hold, and the tokens that close a JSON document soonest."""

    info: Any  # xgrammar.TokenizerInfo
    compiler: Any  # xgrammar.GrammarCompiler
    tokens: list[bytes]  # by id
    usable: Any  # an xgrammar bitmask of the tokens compact JSON may hold (see `usable_tokens`)
    closing: list[int] = field(default_factory=list)  # token ids, in CLOSING_TEXTS order
    quote: int | None = None  # the token '"', which ends a string

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokens[token_id] if token_id < len(self.tokens) else b""


_VOCABULARIES: "weakref.WeakKeyDictionary[Any, dict[int, Vocabulary]]" = weakref.WeakKeyDictionary()


def vocabulary(tokenizer, width: int, stop_ids: list[int]) -> Vocabulary:
    """The tokenizer's `Vocabulary` for logits `width` wide (built once per tokenizer and width)."""
    import xgrammar

    built = _VOCABULARIES.setdefault(tokenizer, {})
    if width not in built:
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=width, stop_token_ids=stop_ids)
        tokens = [bytes(token) for token in info.decoded_vocab]
        ids = {token: index for index, token in enumerate(tokens)}
        closing = [ids[text.encode()] for text in CLOSING_TEXTS if text.encode() in ids]
        built[width] = Vocabulary(info, xgrammar.GrammarCompiler(info), tokens,
                                  usable_tokens(tokenizer, tokens, width, stop_ids), closing, ids.get(b'"'))
    return built[width]


def usable_tokens(tokenizer, tokens: list[bytes], width: int, stop_ids: list[int]):
    """The bitmask (xgrammar's layout) of the tokens an answer in compact JSON may hold. Left out: special tokens
    other than the stop tokens (the answer's text drops them, so a string would lose them), and tokens with a byte
    below 0x20 (compact JSON has none: a string escapes them; xgrammar 0.2.9's masks let such a byte-level token
    into strings, though its matcher refuses the text)."""
    import numpy
    import torch

    special = set(tokenizer.all_special_ids) | {index for index, token in tokenizer.added_tokens_decoder.items()
                                                if token.special}
    bits = numpy.full((width + 31) // 32, 0xFFFFFFFF, dtype=numpy.uint32)
    for index, token in enumerate(tokens):
        if (index in special and index not in stop_ids) or any(byte < 0x20 for byte in token):
            bits[index // 32] &= numpy.uint32(~(1 << (index % 32)) & 0xFFFFFFFF)
    return torch.from_numpy(bits.view(numpy.int32)).unsqueeze(0)


def stop_token_ids(adapter) -> list[int]:
    """The tokens that end generation: the model's generation config's, else the tokenizer's end token."""
    stop = adapter.model.generation_config.eos_token_id
    stop = adapter.tokenizer.eos_token_id if stop is None else stop
    return [stop] if isinstance(stop, int) else list(stop)


class AdditivePenalties:
    """OpenAI's frequency and presence penalties over the tokens generated so far (not the prompt)."""

    def __init__(self, frequency: float, presence: float):
        self.frequency, self.presence = frequency, presence
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        if self.prompt_length is None:  # the first step sees the prompt alone (or nothing, from embeddings)
            self.prompt_length = input_ids.shape[1]
        generated = input_ids[:, self.prompt_length:]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


class LogprobRecorder:
    """Keeps each step's log-probabilities until the token is chosen (`take`), then its OpenAI entry."""

    def __init__(self, tokenizer, top: int, token_bytes):
        self.tokenizer, self.top, self.token_bytes = tokenizer, top, token_bytes
        self.special = set(tokenizer.all_special_ids) | {index for index, token in
                                                         tokenizer.added_tokens_decoder.items() if token.special}
        self.entries: list[dict] = []
        self._pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        self._pending = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def take(self, token_id: int) -> None:
        """Record the chosen token (special tokens, which the answer's text leaves out, are left out here too)."""
        import torch

        row, self._pending = self._pending, None
        if row is None or token_id in self.special:
            return
        top = torch.topk(row, self.top) if self.top else None
        alternatives = [] if top is None else [self._entry(index, value)
                                               for value, index in zip(top.values.tolist(), top.indices.tolist())]
        self.entries.append({**self._entry(token_id, float(row[token_id])), "top_logprobs": alternatives})

    def _entry(self, token_id: int, logprob: float) -> dict:
        raw = self.token_bytes(token_id) or (self.tokenizer.convert_ids_to_tokens(token_id) or "").encode()  # special
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, MIN_LOGPROB)
                if not math.isnan(logprob) else MIN_LOGPROB, "bytes": list(raw)}


class JsonGrammar:
    """Masks every token the schema's grammar does not allow (compact JSON: no whitespace between tokens). Before
    each token it works out how many tokens the shortest way to a valid end takes from here (`closing_token` step by
    step, on a fork of the grammar state). Once that, plus a margin for what the model's next token may open, reaches
    the budget left, the rest of the answer follows that way. The margin is the largest of `CLOSING_MARGIN`, the
    shortest whole document and twice the largest rise in one token seen so far (an array item opened, say)."""

    def __init__(self, vocab: Vocabulary, schema: dict, stop_ids: list[int], budget: int):
        import xgrammar

        compiled = vocab.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
        self.matcher = xgrammar.GrammarMatcher(compiled, override_stop_tokens=stop_ids)
        self.mask = xgrammar.allocate_token_bitmask(1, vocab.info.vocab_size)
        self.vocab, self.budget = vocab, budget
        self.state = _StringState()
        self.steps = 0
        self.closing = False
        self.need: int | None = None  # the last `_tokens_to_close`
        self.margin = CLOSING_MARGIN

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import xgrammar

        if self.steps and not self.matcher.is_terminated():
            token = int(input_ids[0, -1])
            self.matcher.accept_token(token)
            self.state.follow(self.vocab.token_bytes(token))
        self.steps += 1
        left = self.budget - self.steps + 1  # this token included
        if not self.closing:
            need = self._tokens_to_close(left)
            self.margin = max(self.margin, need if self.need is None else 2 * (need - self.need + 1))
            self.need = need
            self.closing = need + self.margin >= left
        self.matcher.fill_next_token_bitmask(self.mask, 0)
        self.mask &= self.vocab.usable
        masked = scores.float().cpu()
        if self.closing:
            token = closing_token(self.mask, self.state, self.vocab)
            masked.fill_(-math.inf)[0, token] = 0.0
        else:
            xgrammar.apply_token_bitmask_inplace(masked, self.mask)
        return masked.to(scores.device, scores.dtype)

    def _tokens_to_close(self, limit: int) -> int:
        """How many tokens, the end token included, the shortest way to a valid end takes (over `limit`: limit + 1)."""
        matcher, state, mask = self.matcher.fork(), self.state.copy(), self.mask.clone()
        for count in range(1, limit + 1):
            if matcher.is_terminated():
                return count - 1
            matcher.fill_next_token_bitmask(mask, 0)
            mask &= self.vocab.usable
            token = closing_token(mask, state, self.vocab)
            matcher.accept_token(token)
            state.follow(self.vocab.token_bytes(token))
        return limit + 1


@dataclass
class _StringState:
    """Whether the JSON written so far is inside a string (and just after a backslash in it)."""

    inside: bool = False
    escaped: bool = False

    def follow(self, text: bytes) -> None:
        for byte in text:
            if self.escaped:
                self.escaped = False
            elif self.inside and byte == ord("\\"):
                self.escaped = True
            elif byte == ord('"'):
                self.inside = not self.inside

    def copy(self) -> "_StringState":
        return _StringState(self.inside, self.escaped)


def _allowed(mask: torch.Tensor, token: int) -> bool:
    return bool((int(mask[0, token // 32]) >> (token % 32)) & 1)


def closing_token(mask: torch.Tensor, state: _StringState, vocab: Vocabulary) -> int:
    """The allowed token (under `mask`, xgrammar's bitmask) that ends the document soonest: the quote inside a string,
    else the first allowed of `CLOSING_TEXTS`; failing those, the allowed token with the lowest id."""
    import torch

    preferred = [vocab.quote] if state.inside and not state.escaped else vocab.closing
    for token in preferred:
        if token is not None and _allowed(mask, token):
            return token
    word = int(torch.nonzero(mask[0]).flatten()[0])
    bits = int(mask[0, word]) & 0xFFFFFFFF
    return word * 32 + (bits & -bits).bit_length() - 1


def answer_logprobs(entries: list[dict] | None, answer: str) -> list[dict] | None:
    """The entries of the tokens that make up `answer` (a stop string may have cut the text of the last ones)."""
    if entries is None:
        return None
    size, offset, kept = len(answer.encode()), 0, 0
    while kept < len(entries) and offset < size:
        offset += len(entries[kept]["bytes"])
        kept += 1
    return entries[:kept]


class Decoding:
    """The logits processors and the token hook of one generation's decoding controls (`pop_from` the options)."""

    KEYS = ("frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "json_schema")

    def __init__(self, adapter, budget: int, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 logprobs: bool = False, top_logprobs: int = 0, json_schema: dict | None = None):
        self.processors: list = []
        self.recorder: LogprobRecorder | None = None
        if frequency_penalty or presence_penalty:
            self.processors.append(AdditivePenalties(frequency_penalty or 0.0, presence_penalty or 0.0))
        if not (logprobs or json_schema is not None):
            return
        stop_ids = stop_token_ids(adapter)
        vocab = vocabulary(adapter.tokenizer, adapter.model.get_output_embeddings().weight.shape[0], stop_ids)
        if logprobs:
            self.recorder = LogprobRecorder(adapter.tokenizer, top_logprobs or 0, vocab.token_bytes)
            self.processors.append(self.recorder)
        if json_schema is not None:
            self.processors.append(JsonGrammar(vocab, json_schema, stop_ids, budget))

    @classmethod
    def pop_from(cls, options: dict, adapter) -> "Decoding":
        return cls(adapter, options["max_new_tokens"], **{key: options.pop(key) for key in cls.KEYS if key in options})

    def on_token(self, token_id: int) -> None:
        if self.recorder is not None:
            self.recorder.take(token_id)

    @property
    def logprobs(self) -> list[dict] | None:
        return self.recorder.entries if self.recorder is not None else None

"""Runs one step: flatten the scheduled tokens, one forward pass, sample.

All requests' tokens (prefill chunks and decodes) form one flat batch of ``T`` tokens.
Per-request bookkeeping happens here, in numpy, while preparing index tensors; the layer
stack itself sees only batched tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn

from inferline.core.outputs import Logprob
from inferline.engine.kv_cache import KVCache
from inferline.engine.prompt_logprobs import PromptRows, plan_prompt_rows, score_prompt_rows
from inferline.engine.sampler import Sampler, SamplingRow, filtered_probs
from inferline.engine.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from inferline.engine.speculative import verify_greedy, verify_sampled
from inferline.models.attention import (
    AttentionGroup,
    AttentionMetadata,
    DecodeBatch,
    PrefillBatch,
)
from inferline.models.row_choice import kernels_chosen_for
from inferline.models.tokenizer import Tokenizer


class ScoringModel(Protocol):
    """What a step with prompt logprobs needs of the model beyond its ``forward``
    (`inferline.models.llama.DecoderForCausalLM` has it)."""

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: torch.Tensor,
        metadata: AttentionMetadata,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Final-normed hidden states ``[R, hidden]`` of ``rows`` (the K/V cache written)."""
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sampling head's float32 logits."""
        ...

    def exact_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The fp32 head's float32 logits for every token."""
        ...


@dataclass
class _Batch:
    """The flat batch of one step, as the model takes it."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    metadata: AttentionMetadata
    logits_index: torch.Tensor  # [S] rows that sample, in `scheduled` order
    prompt_rows: list[PromptRows]  # rows scoring prompt tokens (prompt logprobs)


@dataclass
class _Chunk:
    """One scheduled request's slice of the flat batch."""

    first_token: int  # index of its first token in the flat batch
    start_position: int  # its num_computed_tokens
    num_tokens: int
    block_ids: list[int]

    @property
    def context_len(self) -> int:
        return self.start_position + self.num_tokens


def _slots(block_ids: list[int], positions: np.ndarray, block_size: int) -> np.ndarray:
    """Cache slot of each position: ``block_ids[p // block_size] * block_size + p % block_size``."""
    table = np.asarray(block_ids, dtype=np.int64)
    return table[positions // block_size] * block_size + positions % block_size


def _build_group(chunks: list[_Chunk], block_size: int, device: torch.device) -> AttentionGroup:
    num_seqs = len(chunks)
    max_q = max(c.num_tokens for c in chunks)
    max_k = max(c.context_len for c in chunks)
    query_index = np.zeros((num_seqs, max_q), dtype=np.int64)
    key_slots = np.zeros((num_seqs, max_k), dtype=np.int64)
    mask = np.zeros((num_seqs, 1, max_q, max_k), dtype=bool)
    mask[:, :, :, 0] = True  # padded query rows attend to one key (never NaN; discarded)
    token_index, tile_index = [], []
    key_positions = np.arange(max_k)
    for g, c in enumerate(chunks):
        rows = np.arange(c.num_tokens)
        query_index[g, :] = c.first_token
        query_index[g, : c.num_tokens] = c.first_token + rows
        key_slots[g, : c.context_len] = _slots(
            c.block_ids, key_positions[: c.context_len], block_size
        )
        # causal: query i (position start + i) sees keys 0..start + i
        mask[g, 0, : c.num_tokens] = key_positions[None, :] <= (c.start_position + rows)[:, None]
        token_index.append(c.first_token + rows)
        tile_index.append(g * max_q + rows)
    return AttentionGroup(
        query_token_index=torch.from_numpy(query_index).to(device),
        key_slots=torch.from_numpy(key_slots).to(device),
        mask=torch.from_numpy(mask).to(device),
        token_index=torch.from_numpy(np.concatenate(token_index)).to(device),
        tile_index=torch.from_numpy(np.concatenate(tile_index)).to(device),
    )


def _single_queries(chunk: _Chunk) -> list[_Chunk]:
    """A chunk as single-token queries, each seeing the keys up to its own position (all of
    the chunk's K/V is written before attention runs, so this is the causal mask)."""
    return [
        _Chunk(chunk.first_token + i, chunk.start_position + i, 1, chunk.block_ids)
        for i in range(chunk.num_tokens)
    ]


def _build_prefill_batch(chunks: list[_Chunk], block_size: int) -> PrefillBatch:
    """Rows, positions and block tables of multi-token chunks, for the native kernel."""
    max_blocks = max(len(c.block_ids) for c in chunks)
    tables = np.zeros((len(chunks), max_blocks), dtype=np.int32)
    for i, c in enumerate(chunks):
        tables[i, : len(c.block_ids)] = c.block_ids
    spans = [[c.first_token, c.start_position, c.num_tokens] for c in chunks]
    return PrefillBatch(
        torch.tensor(spans, dtype=torch.int64), torch.from_numpy(tables), block_size
    )


def _build_decode_batch(chunks: list[_Chunk], block_size: int) -> DecodeBatch:
    """Block tables and context lengths of single-token chunks, for the native kernel."""
    max_blocks = max(len(c.block_ids) for c in chunks)
    tables = np.zeros((len(chunks), max_blocks), dtype=np.int32)
    for i, c in enumerate(chunks):
        tables[i, : len(c.block_ids)] = c.block_ids
    return DecodeBatch(
        token_rows=torch.tensor([c.first_token for c in chunks], dtype=torch.int64),
        block_tables=torch.from_numpy(tables),
        context_lens=torch.tensor([c.context_len for c in chunks], dtype=torch.int32),
        block_size=block_size,
    )


class ModelRunner:
    """Owns the model and its KV cache; `run` executes one `SchedulerOutput`."""

    def __init__(self, model: nn.Module, kv_cache: KVCache, tokenizer: Tokenizer) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.tokenizer = tokenizer
        native = getattr(model, "native", None)  # the C kernels, where the model runs them
        self.sampler = Sampler(tokenizer.eos_token_ids, native.row_argmax if native else None)
        self.device = kv_cache.device

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> ModelRunnerOutput:
        """Copies forked blocks, runs the forward pass, samples for requests that need it."""
        for src, dst in out.block_copies:
            self.kv_cache.copy_block(src, dst)
        if out.is_empty:
            return ModelRunnerOutput()
        num_drafts = sum(len(s.draft_token_ids) for s in out.scheduled)
        if num_drafts:  # draft rows run the kernels of the step without them
            with kernels_chosen_for(out.num_tokens - num_drafts):
                return self._run(out)
        return self._run(out)

    def _run(self, out: SchedulerOutput) -> ModelRunnerOutput:
        batch = self._prepare(out.scheduled)
        if batch.prompt_rows:
            return self._run_scoring_prompts(batch, out)
        sampling = [s for s in out.scheduled if s.needs_sample]
        args = (batch.input_ids, batch.positions, self.kv_cache.tensor, batch.metadata)
        if not sampling:
            self.model(*args, batch.logits_index)
            return ModelRunnerOutput()
        logits = self.model(*args, batch.logits_index)
        return self._sample(logits, sampling)

    def _run_scoring_prompts(self, batch: _Batch, out: SchedulerOutput) -> ModelRunnerOutput:
        """A step with prompt logprobs: the hidden states of the sampling rows go through
        the sampling head, those of the prompt rows through the exact one."""
        prompt_index = [r for plan in batch.prompt_rows for r in plan.rows]
        rows = torch.cat(
            [batch.logits_index, torch.tensor(prompt_index, dtype=torch.long, device=self.device)]
        )
        model = cast(ScoringModel, self.model)
        hidden = model.hidden_states(
            batch.input_ids, batch.positions, self.kv_cache.tensor, batch.metadata, rows
        )
        num_sampling = batch.logits_index.shape[0]
        sampling = [s for s in out.scheduled if s.needs_sample]
        result = ModelRunnerOutput()
        if sampling:
            result = self._sample(model.compute_logits(hidden[:num_sampling]), sampling)
        result.prompt_logprobs = score_prompt_rows(
            hidden[num_sampling:], batch.prompt_rows, model.exact_logits
        )
        return result

    def _prepare(self, scheduled: list[ScheduledRequest]) -> _Batch:
        block_size = self.kv_cache.block_size
        chunks, input_ids, positions, slots = [], [], [], []
        logits_index: list[int] = []
        prompt_rows: list[PromptRows] = []
        first_token = 0
        for s in scheduled:
            request = s.request
            start = request.num_computed_tokens
            chunk = _Chunk(first_token, start, s.num_tokens, request.block_ids)
            chunks.append(chunk)
            chunk_positions = np.arange(start, start + s.num_tokens)
            num_known = s.num_tokens - len(s.draft_token_ids)
            input_ids.append(request.all_token_ids[start : start + num_known] + s.draft_token_ids)
            positions.append(chunk_positions)
            slots.append(_slots(request.block_ids, chunk_positions, block_size))
            if request.sampling_params.prompt_logprobs is not None:
                plan = plan_prompt_rows(request, start, s.num_tokens, first_token)
                prompt_rows += [plan] if plan is not None else []
            first_token += s.num_tokens
            logits_index.extend(range(first_token - s.num_sample_rows, first_token))
        native = getattr(self.model, "native", None) is not None
        drafted = {id(c) for c, s in zip(chunks, scheduled, strict=True) if s.draft_token_ids}
        decodes = [c for c in chunks if c.num_tokens == 1]
        prefills = [c for c in chunks if c.num_tokens > 1]
        if native and drafted:  # a decode with drafts: one single-token query per position
            decodes += [q for c in prefills if id(c) in drafted for q in _single_queries(c)]
            prefills = [c for c in prefills if id(c) not in drafted]
        native_decode = native and bool(decodes)
        native_prefill = native and bool(prefills) and getattr(self.model, "native_prefill", False)
        groups = [  # SDPA's padded tiles, only for what the native kernels do not compute
            _build_group(group, block_size, self.device)
            for group in ([] if native_decode else decodes, [] if native_prefill else prefills)
            if group
        ]
        metadata = AttentionMetadata(
            torch.from_numpy(np.concatenate(slots)).to(self.device),
            groups,
            _build_decode_batch(decodes, block_size) if native_decode else None,
            _build_prefill_batch(prefills, block_size) if native_prefill else None,
        )
        flat_ids = torch.tensor([t for ids in input_ids for t in ids], device=self.device)
        flat_positions = torch.from_numpy(np.concatenate(positions)).to(self.device)
        logits_rows = torch.tensor(logits_index, dtype=torch.long, device=self.device)
        return _Batch(flat_ids, flat_positions, metadata, logits_rows, prompt_rows)

    def _sample(self, logits: torch.Tensor, sampling: list[ScheduledRequest]) -> ModelRunnerOutput:
        """One token per plain request; a request with drafts gets the tokens its
        verification keeps (``logits`` holds `ScheduledRequest.num_sample_rows` rows each)."""
        if all(not s.draft_token_ids for s in sampling):
            return self._sample_plain(logits, sampling)
        starts = np.cumsum([0] + [s.num_sample_rows for s in sampling])[:-1].tolist()
        plain = [i for i, s in enumerate(sampling) if not s.draft_token_ids]
        result = ModelRunnerOutput()
        if plain:
            result = self._sample_plain(
                logits[[starts[i] for i in plain]], [sampling[i] for i in plain]
            )
        for start, s in zip(starts, sampling, strict=True):
            if s.draft_token_ids:
                rows = logits[start : start + s.num_sample_rows]
                result.sampled_token_ids[s.request.request_id] = self._verify(rows, s)
        return result

    @staticmethod
    def _verify(logits: torch.Tensor, s: ScheduledRequest) -> list[int]:
        """The tokens a request with drafts keeps (`inferline.engine.speculative`)."""
        logits = logits.float().cpu()
        params = s.request.sampling_params
        if params.is_greedy:
            return verify_greedy(logits, s.draft_token_ids)
        probs = filtered_probs(logits, params)
        return verify_sampled(probs, s.draft_token_ids, s.request.generator)

    def _sample_plain(
        self, logits: torch.Tensor, sampling: list[ScheduledRequest]
    ) -> ModelRunnerOutput:
        rows = [
            SamplingRow(
                s.request.sampling_params,
                s.request.prompt_token_ids,
                s.request.output_token_ids,
                s.request.generator,
                s.request.constraint,
                s.request.max_tokens - s.request.num_output_tokens,
            )
            for s in sampling
        ]
        sampled = self.sampler(logits, rows)
        result = ModelRunnerOutput()
        for i, s in enumerate(sampling):
            request_id = s.request.request_id
            token_id = sampled.token_ids[i]
            result.sampled_token_ids[request_id] = [token_id]
            logprob = sampled.token_logprobs[i]
            if logprob is not None:
                result.logprobs[request_id] = self._logprob(
                    token_id, logprob, sampled.top_token_ids[i], sampled.top_logprobs[i]
                )
        return result

    def _logprob(
        self, token_id: int, logprob: float, top_ids: list[int], top_values: list[float]
    ) -> Logprob:
        decode = self.tokenizer.decode
        top = tuple(
            (i, decode([i], skip_special_tokens=False), v)
            for i, v in zip(top_ids, top_values, strict=True)
        )
        return Logprob(token_id, decode([token_id], skip_special_tokens=False), logprob, top)

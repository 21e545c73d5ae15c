"""`LLM`: the offline Python API (generate, chat, stream) over an `LLMEngine`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from inferline.core.outputs import RequestOutput
from inferline.core.sampling_params import SamplingParams
from inferline.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from inferline.engine.llm_engine import LLMEngine

Message = dict[str, Any]


class LLM:
    """Generate text with a local model.

    Example::

        llm = LLM()  # SmolLM2-135M-Instruct on the CPU
        outs = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8))
    """

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        config: EngineConfig | None = None,
        kv_cache_gib: float = 1.0,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 1024,
        max_num_seqs: int = 64,
        weight_format: str = "auto",
    ) -> None:
        self.engine = LLMEngine(
            config
            or EngineConfig(
                model=model,
                weight_format=weight_format,
                cache=CacheConfig(
                    kv_cache_gib=kv_cache_gib, enable_prefix_caching=enable_prefix_caching
                ),
                scheduler=SchedulerConfig(
                    max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs
                ),
            )
        )
        self.tokenizer = self.engine.tokenizer

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion, batched; outputs are in prompt order."""
        ids = [self.engine.add_request(p, params) for p in _as_prompt_list(prompts)]
        finished: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[i] for i in ids]

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        """Renders each conversation with the model's chat template, then generates."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.render_chat(c, tools=tools) for c in conversations]  # type: ignore[arg-type]
        return self.generate(prompts, params)

    def render_chat(
        self, messages: Sequence[Message], *, tools: Sequence[dict[str, Any]] | None = None
    ) -> str:
        """The prompt text of a conversation, ending with the assistant's turn opening."""
        return self.tokenizer.apply_chat_template(messages, tools=tools)

    def stream(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None
    ) -> Iterator[RequestOutput]:
        """Yields outputs of one request as tokens arrive; aborts it if the caller stops."""
        request_id = self.engine.add_request(prompt, params)
        finished = False
        try:
            while not finished:
                for output in self.engine.step():
                    if output.request_id == request_id:
                        finished = output.finished
                        yield output
        finally:
            if not finished:
                self.engine.abort_request(request_id)


def _as_prompt_list(
    prompts: str | Sequence[str] | Sequence[Sequence[int]] | Sequence[int],
) -> list[str | Sequence[int]]:
    """One prompt (text or token ids) or a list of them -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if items and isinstance(items[0], int):
        return [items]  # type: ignore[list-item]
    return items  # type: ignore[return-value]

"""Our loader, model and tokenizer against Hugging Face transformers on the same files.

Tolerance: fp32 log-probabilities of the top-20 tokens agree within 2e-3 (observed 5e-5 on
SmolLM2 and 3e-5 on Qwen2.5, 2026-11-24;
both run float32, in a different order of operations) and greedy token ids agree exactly
for 32 steps on 5 prompts.
"""

from __future__ import annotations

import unicodedata

import pytest
import torch

from inferline.core import SamplingParams
from inferline.engine import CacheConfig, EngineConfig, LLMEngine
from inferline.models import load_model, resolve_model_path
from inferline.models.key_balance import key_factors
from tests.conftest import run_to_completion
from tests.models.hf_reference import greedy_with_logprobs, load_reference, save_as_hf_directory

LOGPROB_TOLERANCE = 2e-3
NUM_STEPS = 32
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village",
    "Ünïcödé test: 日本語 and emoji 🚀 means",
    "<|im_start|>user\nList three fruits.<|im_end|>\n<|im_start|>assistant\n",
]
TOKENIZER_SAMPLES = [
    "Hello, world! How are you today?",
    "Ünïcödé: naïve café — 日本語のテキスト, emoji 🚀🔥, Ελληνικά, ﬁ ligature",
    "def square(x):\n    return x ** 2  # tab\there   spaces  \n\n",
    "In 2024, 12345 users paid $3.14 each; call 555-0199 or x=10**6.",
    "  leading spaces and it's I'll they've WE'LL",
    "<|im_start|>user\nhi<|im_end|><|endoftext|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "한국어 텍스트와 中文混合 text",
    "emoji sequences: 👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null, "b": true}}',
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    '<html><body><div class="x">Text &amp; more</div></body></html>',
    "tabs\t\tand\r\nwindows\r\nnewlines\n\n\n",
    "x" * 300,
    "a b  c   d    e     f",
    "https://example.com/path?query=1&other=two#frag",
    "camelCaseIdentifiers and snake_case_ones, SCREAMING_CASE",
    "math: ∑_{i=1}^{n} i² = n(n+1)/2 ≈ ∞ ≠ √2",
    "café vs cafe\u0301 (combining accent)",
    "",
]
MODELS = [
    pytest.param("smollm2-135m", id="smollm2"),
    pytest.param("qwen2.5-coder-0.5b", id="qwen2.5", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=MODELS)
def pair(request, cache_dir):  # type: ignore[no-untyped-def]
    """(our LoadedModel, transformers Reference) for one model."""
    ours = load_model(request.param, cache_dir=cache_dir)
    reference = load_reference(resolve_model_path(request.param, cache_dir))
    yield ours, reference
    del ours, reference


def test_tokenizer_ids_equal_transformers(pair) -> None:  # type: ignore[no-untyped-def]
    ours, reference = pair
    assert len(TOKENIZER_SAMPLES) >= 20
    # Qwen2's own tokenizer.json normalizes to NFC; transformers' GGUF import drops that
    # normalizer, so for Qwen we compare with the reference on NFC-normalized text.
    normalize = ours.config.architecture == "qwen2"
    for text in TOKENIZER_SAMPLES:
        reference_text = unicodedata.normalize("NFC", text) if normalize else text
        expected = reference.tokenizer(reference_text, add_special_tokens=False).input_ids
        assert ours.tokenizer.encode(text) == expected, text
        assert ours.tokenizer.decode(
            expected, skip_special_tokens=False
        ) == reference.tokenizer.decode(expected, skip_special_tokens=False)


def test_chat_template_renders_like_transformers(pair) -> None:  # type: ignore[no-untyped-def]
    ours, reference = pair
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    expected = reference.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert ours.tokenizer.apply_chat_template(messages) == expected


def test_chat_template_with_tools_renders_like_transformers(pair) -> None:  # type: ignore[no-untyped-def]
    ours, reference = pair
    if "tools" not in (ours.tokenizer.chat_template or ""):
        pytest.skip("this model's template has no tools")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp_c": 21}'},
    ]
    expected = reference.tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert ours.tokenizer.apply_chat_template(messages, tools=tools) == expected


def test_weights_equal_transformers(pair) -> None:  # type: ignore[no-untyped-def]
    ours, reference = pair
    hf_layer = reference.model.model.layers[3].self_attn
    our_layer = ours.model.layers[3]
    q_size = ours.config.num_heads * ours.config.head_dim
    kv_size = ours.config.num_kv_heads * ours.config.head_dim
    q, k, _ = our_layer.qkv_proj.weight.split([q_size, kv_size, kv_size])
    # llama q/k rows un-permuted exactly, then balanced by powers of two (`key_balance`)
    factors = key_factors(hf_layer.k_proj.weight, hf_layer.k_proj.bias, ours.config.num_kv_heads)
    group = ours.config.num_heads // ours.config.num_kv_heads
    per_query = factors.repeat_interleave(group, dim=0).reshape(-1, 1)
    assert torch.equal(q, hf_layer.q_proj.weight * per_query)
    assert torch.equal(k, hf_layer.k_proj.weight / factors.reshape(-1, 1))
    if hf_layer.k_proj.bias is not None:
        bias_k = our_layer.qkv_proj.bias[q_size : q_size + kv_size]
        assert torch.equal(bias_k, hf_layer.k_proj.bias / factors.reshape(-1))
    assert torch.equal(ours.model.embed_tokens.weight, reference.model.model.embed_tokens.weight)


def test_greedy_tokens_and_logprobs_equal_transformers(pair, cache_dir) -> None:  # type: ignore[no-untyped-def]
    ours, reference = pair
    config = EngineConfig(model=ours.name, cache_dir=cache_dir, weight_format="fp32")
    engine = LLMEngine(config, loaded=ours)
    prompts = [ours.tokenizer.encode(p) for p in PROMPTS]
    params = SamplingParams(max_tokens=NUM_STEPS, temperature=0, ignore_eos=True, logprobs=20)
    outputs = run_to_completion(engine, prompts, params)
    worst = 0.0
    for prompt_ids, output in zip(prompts, outputs, strict=True):
        expected_tokens, expected_logprobs = greedy_with_logprobs(
            reference.model, prompt_ids, NUM_STEPS
        )
        assert output.outputs[0].token_ids == expected_tokens
        for step, expected in zip(output.outputs[0].logprobs or [], expected_logprobs, strict=True):
            top_ids = torch.tensor([t[0] for t in step.top])
            ours_top = torch.tensor([t[2] for t in step.top])
            worst = max(worst, float((ours_top - expected[top_ids]).abs().max()))
    assert worst < LOGPROB_TOLERANCE, f"max |logprob difference| {worst}"


def test_hf_directory_loads_the_same_model(pair, tmp_path, cache_dir) -> None:  # type: ignore[no-untyped-def]
    ours, reference = pair
    if ours.config.architecture != "llama":
        pytest.skip("one architecture is enough for the directory format")
    save_as_hf_directory(reference, tmp_path)
    loaded = load_model(str(tmp_path), cache_dir=cache_dir)
    assert loaded.config.num_layers == ours.config.num_layers
    assert loaded.tokenizer.encode(TOKENIZER_SAMPLES[1]) == ours.tokenizer.encode(
        TOKENIZER_SAMPLES[1]
    )
    config = EngineConfig(
        model=str(tmp_path), weight_format="fp32", cache=CacheConfig(kv_cache_tokens=4096)
    )
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    from_dir = run_to_completion(LLMEngine(config, loaded=loaded), PROMPTS[:2], params)
    from_gguf = run_to_completion(LLMEngine(config, loaded=ours), PROMPTS[:2], params)
    assert [o.outputs[0].token_ids for o in from_dir] == [o.outputs[0].token_ids for o in from_gguf]

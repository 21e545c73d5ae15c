"""The cost of constrained decoding: per-token time, constrained versus free, batch 1 and 16.

Offline, through `LLM.generate` (no server), greedy, default settings (SmolLM2 unless
``--model``). Cases: ``json`` asks for a JSON array of 12 person objects (a schema that keeps
the grammar busy for ~200 tokens); ``tools_auto`` offers two tools in ``auto`` mode to a
question answered in text (what every request with tools pays while the model writes
text); ``tools_required`` forces calls. Each free twin generates exactly as many tokens
(ignore_eos). Also the first-use cost of a schema (grammar compiled and checked) and of a
cached one.

usage: .venv/bin/python benchmarks/structured_overhead.py [--model M] [--repeats N] [--out DIR]
Writes structured_overhead[_<model>].json (default benchmarks/results/<date>-<cpu>/). Hold
``flock /tmp/bench.lock`` around it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": PERSON, "minItems": 12, "maxItems": 12}
QUESTION = "List twelve people as JSON with name, age and city."
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
]


def main() -> None:
    """Measures and prints; writes JSON."""
    from inferline import LLM, SamplingParams
    from inferline.cli.main import default_cache_dir
    from inferline.core.structured import StructuredOutput
    from inferline.core.tool_calls import ToolCalling, ToolFunction
    from inferline.engine import EngineConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the min counts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    llm = LLM(config=EngineConfig(model=args.model, cache_dir=default_cache_dir()))
    structured = StructuredOutput("json_schema", json.dumps(SCHEMA))

    def constrain(spec: StructuredOutput) -> Any:
        return llm.engine._constraint(SamplingParams(structured=spec))

    tokenizer_ms = _timed(lambda: constrain(StructuredOutput("json_object")))
    compile_first = _timed(lambda: constrain(structured))
    compile_cached = _timed(lambda: constrain(structured))
    result: dict[str, Any] = {
        "model": args.model,
        "grammar_tokenizer_first_use_ms": tokenizer_ms,
        "schema_compile_first_ms": compile_first,
        "schema_compile_cached_ms": compile_cached,
    }
    functions = tuple(
        ToolFunction(t["function"]["name"], json.dumps(t["function"]["parameters"])) for t in TOOLS
    )
    auto = ToolCalling(functions, "auto").to_structured()
    required = ToolCalling(functions, "required").to_structured()
    cases = {  # name: (question, tools, constraint, max_tokens)
        "json": (QUESTION, None, structured, 400),  # ends by itself, ~240 tokens
        "json_cut": (QUESTION, None, structured, 160),  # cut: the closing plan runs each token
        "tools_auto": ("Write a short story about a dragon.", TOOLS, auto, 240),
        "tools_required": ("Weather in Paris, Rome and Oslo?", TOOLS, required, 240),
    }
    llm.generate(["Hello"], SamplingParams(max_tokens=8, temperature=0))  # warm-up
    for name, (question, tools, spec, max_tokens) in cases.items():
        prompt = llm.render_chat([{"role": "user", "content": question}], tools=tools)
        for batch in (1, 16):
            row = _overhead(llm, prompt, spec, batch, SamplingParams, max_tokens, args.repeats)
            result[f"{name}_batch_{batch}"] = row
            print(f"{name} batch {batch}: {json.dumps(row)}")
    print(
        f"grammar tokenizer (once per model) {tokenizer_ms:.0f} ms; schema compile: first "
        f"{compile_first:.2f} ms, cached {compile_cached:.3f} ms"
    )
    out = args.out or _default_out()
    out.mkdir(parents=True, exist_ok=True)
    name = "structured_overhead" + ("" if args.model == "smollm2-135m" else f"_{args.model}")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))


def _overhead(
    llm: Any, prompt: str, spec: Any, batch: int, sampling: Any, max_tokens: int, repeats: int
) -> dict[str, Any]:
    """Per-token time of ``batch`` constrained rows against free twins of the same length
    (the fastest of ``repeats`` runs each)."""
    constrained = sampling(max_tokens=max_tokens, temperature=0, structured=spec)
    outputs = llm.generate([prompt] * batch, constrained)
    tokens = [len(o.outputs[0].token_ids) for o in outputs]
    free = sampling(max_tokens=max(tokens), temperature=0, ignore_eos=True)
    c_times, f_times = [], []
    for _ in range(repeats):  # interleaved, so drift in the machine's speed hits both
        for params, times in ((constrained, c_times), (free, f_times)):
            start = time.perf_counter()
            llm.generate([prompt] * batch, params)
            times.append(time.perf_counter() - start)
    row = {
        "constrained_tokens": sum(tokens),
        "constrained_ms_per_token_per_row": 1000 * min(c_times) / max(tokens),
        "free_tokens": max(tokens) * batch,
        "free_ms_per_token_per_row": 1000 * min(f_times) / max(tokens),
        "repeats": repeats,
        "sample_output": outputs[0].outputs[0].text[:160],
    }
    row["overhead"] = row["constrained_ms_per_token_per_row"] / row["free_ms_per_token_per_row"] - 1
    return row


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def _default_out() -> Path:
    cpu = "amd-epyc" if "AMD" in Path("/proc/cpuinfo").read_text() else "intel-xeon"
    repo = Path(__file__).resolve().parent.parent
    return repo / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{cpu}"


if __name__ == "__main__":
    main()

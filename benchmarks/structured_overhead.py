"""The cost of constrained decoding: per-token time, constrained versus free, batch 1 and 16.

Offline, through `LLM.generate` (no server), greedy, SmolLM2, default settings. Each
constrained request asks for a JSON array of 12 person objects (a schema that keeps the
grammar busy for ~200 tokens); its free twin generates exactly as many tokens (ignore_eos).
Also the first-use cost of a schema (grammar compiled and checked) and of a cached one.

usage: .venv/bin/python benchmarks/structured_overhead.py [--out DIR]
Writes structured_overhead.json (default benchmarks/results/<date>-<cpu>/). Hold
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


def main() -> None:
    """Measures and prints; writes JSON."""
    from inferline import LLM, SamplingParams
    from inferline.cli.main import default_cache_dir
    from inferline.core.structured import StructuredOutput
    from inferline.engine import EngineConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    llm = LLM(config=EngineConfig(model="smollm2-135m", cache_dir=default_cache_dir()))
    prompt = llm.engine.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}])
    structured = StructuredOutput("json_schema", json.dumps(SCHEMA))

    def constrain(spec: StructuredOutput) -> Any:
        return llm.engine._constraint(SamplingParams(structured=spec))

    tokenizer_ms = _timed(lambda: constrain(StructuredOutput("json_object")))
    compile_first = _timed(lambda: constrain(structured))
    compile_cached = _timed(lambda: constrain(structured))
    result: dict[str, Any] = {
        "grammar_tokenizer_first_use_ms": tokenizer_ms,
        "schema_compile_first_ms": compile_first,
        "schema_compile_cached_ms": compile_cached,
    }
    llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0))  # warm-up
    for batch in (1, 16):
        constrained = SamplingParams(max_tokens=400, temperature=0, structured=structured)
        start = time.perf_counter()
        outputs = llm.generate([prompt] * batch, constrained)
        c_time = time.perf_counter() - start
        tokens = [len(o.outputs[0].token_ids) for o in outputs]
        for o in outputs:
            json.loads(o.outputs[0].text)  # it parses
        free = SamplingParams(max_tokens=max(tokens), temperature=0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate([prompt] * batch, free)
        f_time = time.perf_counter() - start
        free_tokens = max(tokens) * batch
        row = {
            "constrained_tokens": sum(tokens),
            "constrained_ms_per_token_per_row": 1000 * c_time / max(tokens),
            "free_tokens": free_tokens,
            "free_ms_per_token_per_row": 1000 * f_time / max(tokens),
        }
        row["overhead"] = (
            row["constrained_ms_per_token_per_row"] / row["free_ms_per_token_per_row"] - 1
        )
        result[f"batch_{batch}"] = row
        print(f"batch {batch}: {json.dumps(row)}")
    print(
        f"grammar tokenizer (once per model) {tokenizer_ms:.0f} ms; schema compile: first "
        f"{compile_first:.2f} ms, cached {compile_cached:.3f} ms"
    )
    out = args.out or _default_out()
    out.mkdir(parents=True, exist_ok=True)
    (out / "structured_overhead.json").write_text(json.dumps(result, indent=2))


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

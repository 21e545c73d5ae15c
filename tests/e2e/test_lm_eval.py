"""lm-evaluation-harness, unmodified and in its own virtualenv, against `inferline serve`.

A multiple-choice task (loglikelihood: `local-completions`, which sends ``echo: true,
logprobs: 1, max_tokens: 1`` with token-id prompts) and a generation task
(`local-chat-completions`), both defined on local files (tests/data/lm_eval: no dataset
hub is reachable). lm-eval's per-choice loglikelihoods must agree with SmolLM2 run through
transformers on the same GGUF file within `LOGLIKELIHOOD_TOLERANCE` nats, and pick the
same answers. The server runs ``--weight-format fp32`` (transformers' numerics), so a
token off by one position or a wrong split of context and continuation shows as a
difference of nats, not thousandths (observed agreement: see `test_multiple_choice...`).

The virtualenv (lm-eval 0.4.13 with its API extras, and transformers for the tokenizer;
lm-eval does not pull torch) is created on first use under
``~/.cache/inferline/peers/lm-eval-venv`` like LiteLLM's, in about a minute; when it
cannot be installed (no package index), the tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from inferline.models import resolve_model_path
from tests.e2e.conftest import ServerProcess, start_server, stop_server
from tests.models.hf_reference import load_reference

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PEERS = Path.home() / ".cache" / "inferline" / "peers"
LM_EVAL_VENV = PEERS / "lm-eval-venv"
LM_EVAL_SPECS = ("lm-eval[api]==0.4.13", "transformers==5.24.0")
TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval"
MODEL = "smollm2-135m"
LOGLIKELIHOOD_TOLERANCE = 5e-3  # nats per (context, continuation) pair, fp32 both sides
RUN_TIMEOUT_S = 300


def ensure_peer_venv(venv: Path, specs: tuple[str, ...]) -> Path:
    """A peer tool's own virtualenv (``-m venv`` and pip, as for LiteLLM), created
    when missing or when ``specs`` changed; returns its ``bin`` folder. Raises
    `subprocess.CalledProcessError` when pip cannot install."""
    marker = venv / "inferline-specs.txt"
    wanted = "\n".join(specs)
    if marker.exists() and marker.read_text() == wanted:
        return venv / "bin"
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, capture_output=True, text=True)
    subprocess.run([*pip, *specs], check=True, capture_output=True, text=True)
    marker.write_text(wanted)
    return venv / "bin"


@pytest.fixture(scope="module")
def lm_eval_bin() -> Path:
    """lm-eval's virtualenv ``bin`` (installed once; skipped when it cannot be)."""
    try:
        return ensure_peer_venv(LM_EVAL_VENV, LM_EVAL_SPECS)
    except (subprocess.CalledProcessError, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        pytest.skip(
            f"cannot install {' '.join(LM_EVAL_SPECS)} into {LM_EVAL_VENV}: {detail[-500:]}"
        )


@pytest.fixture(scope="module")
def fp32_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """`inferline serve` on SmolLM2 in fp32 (the numerics transformers runs)."""
    running = start_server(tmp_path_factory.mktemp("lm-eval-server"), "--weight-format", "fp32")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    """transformers on the same GGUF file, and its tokenizer saved for lm-eval."""
    loaded = load_reference(resolve_model_path(MODEL, cache_dir))
    folder = tmp_path_factory.mktemp("tokenizer")
    loaded.tokenizer.save_pretrained(folder)
    return loaded, folder


def run_lm_eval(bin_dir: Path, out: Path, model: str, model_args: dict[str, Any], task: str,
                *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Runs ``lm_eval`` (tasks from tests/data/lm_eval); returns its results and samples."""
    args = ",".join(f"{k}={v}" for k, v in model_args.items())
    command = [
        str(bin_dir / "lm_eval"), "--model", model, "--model_args", args, "--tasks", task,
        "--include_path", str(TASKS), "--output_path", str(out), "--log_samples", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(out / "hf"), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    done = subprocess.run(
        command, cwd=TASKS, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    (samples_file,) = out.rglob(f"samples_{task}_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return json.loads(results_file.read_text()), samples


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    """lm-eval's split of a (context, continuation) pair into tokens (`_encode_pair`)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    return context_ids, whole[len(context_ids) :]


@torch.inference_mode()
def reference_loglikelihood(reference, context: str, continuation: str) -> float:  # type: ignore[no-untyped-def]
    """Sum of the continuation tokens' log-probabilities, by transformers."""
    context_ids, continuation_ids = encode_pair(reference.tokenizer, context, continuation)
    ids = context_ids + continuation_ids
    logits = reference.model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    rows = range(len(context_ids) - 1, len(ids) - 1)
    return sum(float(logprobs[r, ids[r + 1]]) for r in rows)


def test_multiple_choice_loglikelihoods_agree_with_transformers(
    lm_eval_bin: Path, fp32_server: ServerProcess, reference, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    loaded, tokenizer_dir = reference
    model_args = {
        "model": MODEL,
        "base_url": f"{fp32_server.base_url}/v1/completions",
        "tokenizer": tokenizer_dir,
        "tokenized_requests": True,
        "num_concurrent": 4,
        "max_retries": 1,
    }
    results, samples = run_lm_eval(lm_eval_bin, tmp_path, "local-completions", model_args,
                                   "inferline_mc")  # fmt: skip
    assert len(samples) == 12
    differences, reference_correct = [], 0
    for sample in samples:
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        ours = [float(r[0][0]) for r in sample["resps"]]
        theirs = [reference_loglikelihood(loaded, c, x) for c, x in pairs]
        differences += [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
        assert ours.index(max(ours)) == theirs.index(max(theirs)), sample["doc"]
        reference_correct += theirs.index(max(theirs)) == sample["doc"]["answer"]
    print(f"max |lm-eval - transformers| = {max(differences):.2e} nats over {len(differences)}")
    assert max(differences) < LOGLIKELIHOOD_TOLERANCE
    accuracy = results["results"]["inferline_mc"]["acc,none"]
    assert accuracy == pytest.approx(reference_correct / len(samples))


def test_generation_task_runs_through_chat_completions(
    lm_eval_bin: Path, fp32_server: ServerProcess, tmp_path: Path
) -> None:
    from openai import OpenAI

    model_args = {
        "model": MODEL,
        "base_url": f"{fp32_server.base_url}/v1/chat/completions",
        "num_concurrent": 1,
        "max_retries": 1,
    }
    results, samples = run_lm_eval(lm_eval_bin, tmp_path, "local-chat-completions", model_args,
                                   "inferline_gen", "--apply_chat_template")  # fmt: skip
    assert len(samples) == 4
    assert "exact_match,none" in results["results"]["inferline_gen"]
    client = OpenAI(base_url=f"{fp32_server.base_url}/v1", api_key="unused", max_retries=0)
    for sample in samples:
        (messages_json,) = sample["arguments"]["gen_args_0"]["arg_0"]
        answer = client.chat.completions.create(
            model=MODEL, messages=json.loads(messages_json), max_tokens=16, temperature=0,
            stop=["\n"],
        )  # fmt: skip
        (response,) = sample["resps"][0]
        assert response and response == answer.choices[0].message.content

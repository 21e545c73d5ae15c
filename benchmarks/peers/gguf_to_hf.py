#!/usr/bin/env python3
"""Converts a GGUF model into a Hugging Face checkpoint directory (for vLLM, which needs one).

transformers dequantizes every GGUF tensor to float32 on load; we save config, safetensors
weights, tokenizer and chat template, then reload the saved copy and answer one chat prompt
greedily as a sanity check.  Needs transformers, accelerate and gguf (the repo's .venv).

usage: gguf_to_hf.py GGUF_FILE OUT_DIR
"""

import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def convert(gguf_path: str, out_dir: str) -> None:
    """Loads ``gguf_path`` with transformers and saves it as safetensors under ``out_dir``."""
    # from_pretrained(dir, gguf_file=name) needs a real directory: a bare relative file name
    # gives dir "" and an HFValidationError, hence abspath.
    directory, name = os.path.split(os.path.abspath(gguf_path))
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    print(
        f"loaded and dequantized in {time.perf_counter() - start:.1f} s: "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
        f"{type(model).__name__}"
    )
    # transformers 5.x keeps a GGUF "quantizer" attached even though every weight is now a
    # dense float tensor, and then refuses save_pretrained.  Check that, then detach it.
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes <= {torch.float32, torch.float16, torch.bfloat16}, dtypes
    packed = [n for n, m in model.named_modules() if "Gguf" in type(m).__name__]
    assert not packed, f"packed GGUF modules left: {packed[:3]}"
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    print("saved:", sorted(os.listdir(out_dir)))


def check(out_dir: str) -> None:
    """Reloads the saved checkpoint and prints its greedy answer to one question."""
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    if not tokenizer.chat_template:
        sys.exit("the saved tokenizer has no chat template")
    messages = [
        {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
    ]
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**encoded, max_new_tokens=30, do_sample=False)
    answer = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    print("sanity check answer:", repr(answer))


def main() -> None:
    """Command-line entry point."""
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2])
    check(sys.argv[2])


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Cross-checks our load generator (`inferline bench`) with a third-party one, guidellm, against
# a running OpenAI-compatible server: an a-like run and a b16-like run with the same shapes as
# `inferline bench --scenario a|b16` (src/inferline/bench/scenarios.py):
#   g-a    synchronous (1 stream), 512-token prompts, 128 output tokens, 10 requests
#   g-b16  concurrent, 16 streams, 256-token prompts, 128 output tokens, 48 requests
# Both stream /v1/completions with temperature 0 and a fixed output length (guidellm sends
# max_tokens + ignore_eos, as our client does).  Each run first sends warm-up requests (1 for
# g-a, 16 = one per stream for g-b16), then the counts above; the figures leave the warm-ups
# out: on a 2-core host guidellm's own start-up (its worker importing torch, its data
# pipeline) competes with the server for the first seconds, which made the first request of
# g-a take ~10 s instead of ~1.3 s.  guidellm_summary.py computes the figures from guidellm's
# per-request timings the way our client summarises its own (guidellm's warm-up phase is not
# used: it leaves out a number of requests that depends on completion order).  Its data loader
# makes only the prompts the run sends (prefetch_factor = warm-ups + requests): by default it
# synthesises 4096 prompts ahead in a worker process that held a core for ~10 s of the run,
# which halved inferline's g-a figures on 2026-12-04 (TTFT 720 ms against 292 with our client;
# 264 with the prefetch bounded).  guidellm makes its synthetic prompts with the
# tokenizer given (HF_HUB_OFFLINE=1: a local directory with tokenizer.json, e.g. the HF
# checkpoint benchmarks/compare converts for vLLM), so prompt lengths are exact for that model.
#
# usage: benchmarks/peers/guidellm_check.sh --setup-only
#        benchmarks/peers/guidellm_check.sh --target URL --model NAME --tokenizer DIR --out DIR
#                                            [--name SERVER] [--runs a,b16] [--max-seconds S]
#
# Writes, per run R (a, b16), under --out:
#   SERVER-g-R.guidellm.json  guidellm's own report
#   SERVER-g-R.json           the key figures in `inferline bench` summary form (ttft_s, tpot_s
#                             as {mean, p50, p90, p99} in seconds, output_tokens_per_s, completed,
#                             failed, wall_s; see guidellm_summary.py), read by summarize.py
#   SERVER-g-R.log            guidellm's console output
# and appends one line per run to guidellm.txt (TTFT p50, TPOT p50, ITL p50, output tok/s).
# Exits non-zero if a run fails or completes no request.
#
# guidellm is installed on first use into its own venv, $INFERLINE_PEERS_DIR/guidellm-venv
# (default ~/.cache/inferline-peers): torch==2.13.0 first (the machine's local CPU wheel; an
# unpinned torch pulls a multi-GB CUDA build), then $GUIDELLM_SPEC (default guidellm).
# Environment: INFERLINE_PEERS_DIR, GUIDELLM_SPEC, PYTHON (for the venv, default python3).
set -euo pipefail

CACHE_DIR="${INFERLINE_PEERS_DIR:-$HOME/.cache/inferline-peers}"
GUIDELLM_SPEC="${GUIDELLM_SPEC:-guidellm}"
SYS_PYTHON="${PYTHON:-python3}"
VENV="$CACHE_DIR/guidellm-venv"

log() { printf '[guidellm_check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

setup() {
    local marker="$VENV/.inferline-installed"
    if [[ -f "$marker" && "$(cat "$marker")" == "$GUIDELLM_SPEC" ]]; then
        return 0
    fi
    log "installing $GUIDELLM_SPEC into $VENV (torch==2.13.0 first)"
    "$SYS_PYTHON" -m venv "$VENV" || die "cannot create the venv $VENV"
    "$VENV/bin/python" -m pip install --upgrade pip || die "pip upgrade failed"
    "$VENV/bin/python" -m pip install "torch==2.13.0" || die "pip install torch==2.13.0 failed"
    "$VENV/bin/python" -m pip install "$GUIDELLM_SPEC" || die "pip install $GUIDELLM_SPEC failed"
    "$VENV/bin/guidellm" --version >/dev/null || die "guidellm installed, but does not start"
    echo "$GUIDELLM_SPEC" >"$marker"
}

TARGET="" MODEL="" TOKENIZER="" OUT="" NAME="server" RUNS="a,b16" MAX_SECONDS="" SETUP_ONLY=0
value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"; printf '%s' "$2"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) TARGET="$(value "$@")"; shift 2 ;;
        --model) MODEL="$(value "$@")"; shift 2 ;;
        --tokenizer) TOKENIZER="$(value "$@")"; shift 2 ;;
        --out) OUT="$(value "$@")"; shift 2 ;;
        --name) NAME="$(value "$@")"; shift 2 ;;
        --runs) RUNS="$(value "$@")"; shift 2 ;;
        --max-seconds) MAX_SECONDS="$(value "$@")"; shift 2 ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
setup
[[ $SETUP_ONLY == 1 ]] && exit 0
[[ -n "$TARGET" && -n "$MODEL" && -n "$TOKENIZER" && -n "$OUT" ]] \
    || die "--target, --model, --tokenizer and --out are required"
[[ -f "$TOKENIZER/tokenizer.json" || -f "$TOKENIZER/tokenizer_config.json" ]] \
    || die "--tokenizer $TOKENIZER: no tokenizer.json / tokenizer_config.json there"
mkdir -p "$OUT"

failed=0
for run in ${RUNS//,/ }; do
    case "$run" in
        a)   profile='"kind": "synchronous"'; prompt=512; output=128; requests=10; warmup=1 ;;
        b16) profile='"kind": "concurrent", "streams": [16]'; prompt=256; output=128; requests=48; warmup=16 ;;
        *) die "unknown run '$run' (a or b16)" ;;
    esac
    base="$OUT/$NAME-g-$run"
    profile="{$profile}"
    constraints="{\"kind\": \"max_requests\", \"count\": $((requests + warmup))}"
    if [[ -n "$MAX_SECONDS" ]]; then
        constraints="$constraints, {\"kind\": \"max_duration\", \"seconds\": $MAX_SECONDS}"
    fi
    cat >"$base.scenario.json" <<JSON
{
  "metadata": {"name": "inferline-$run", "description": "inferline bench scenario $run, through guidellm"},
  "spec": {
    "backend": {"kind": "openai_http", "target": "$TARGET", "model": "$MODEL",
                "request_format": "/v1/completions", "stream": true, "timeout": 600,
                "extras": {"body": {"temperature": 0}}},
    "profile": $profile,
    "constraints": [$constraints],
    "tokenizer": {"kind": "huggingface_auto", "model": "$TOKENIZER"},
    "data": [{"kind": "synthetic_text", "prompt_tokens": $prompt, "output_tokens": $output}],
    "data_loader": {"kind": "pytorch", "prefetch_factor": $((requests + warmup))},
    "outputs": [{"kind": "json", "path": "$base.guidellm.json"}]
  }
}
JSON
    rm -f "$base.guidellm.json" "$base.json"
    log "$NAME g-$run: guidellm against $TARGET ($MODEL), $prompt/$output tokens, $warmup warm-up + $requests requests"
    rc=0
    # One worker process: guidellm spawns up to 10 by default, and on a 2-core host their
    # start-up (each imports torch and transformers) starves the server for the first seconds.
    # One asyncio worker drives 16 streams.
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=1 \
        GUIDELLM__MAX_WORKER_PROCESSES="${GUIDELLM__MAX_WORKER_PROCESSES:-1}" \
        "$VENV/bin/guidellm" run --scenario "$base.scenario.json" --disable-console-interactive \
        </dev/null >"$base.log" 2>&1 || rc=$?
    if [[ $rc != 0 || ! -f "$base.guidellm.json" ]]; then
        tail -n 20 "$base.log" >&2
        log "$NAME g-$run: guidellm failed (exit $rc; log: $base.log)"
        failed=1
        continue
    fi
    "$VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/guidellm_summary.py" \
        "$base.guidellm.json" "$base.json" "$NAME g-$run" --skip "$warmup" | tee -a "$OUT/guidellm.txt" >&2 || failed=1
done
exit "$failed"

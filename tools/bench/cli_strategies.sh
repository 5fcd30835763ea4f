#!/usr/bin/env bash
# Every strategy from the command line on the three subject models (cpu target, measured gains):
#   bash tools/bench/cli_strategies.sh OUT_DIR [SUBJECT ...]     (default: minilm-sentiment effnet-lite0 smollm2)
# export -> partition -> calibrate -> profile --measure -> solve --strategy S for every S, with
# pareto-greedy / ip-pairs measuring on 8 held-out samples (--eval_data). Prints one line per solve.
set -euo pipefail
out=${1:?usage: bash tools/bench/cli_strategies.sh OUT_DIR [SUBJECT ...]}
shift
subjects=${*:-minilm-sentiment effnet-lite0 smollm2}
mkdir -p "$out"
cd "$out"
for s in $subjects; do
  t0=$(date +%s)
  python - "$s" <<'PY'
import sys
import numpy as np
from onnx_amp.runtime.subjects import subject_batch
s = sys.argv[1]
kw = {"seq_len": 64} if s == "smollm2" else {"max_len": 64} if s.startswith("minilm") else {}
for split, seed in (("calib", 0), ("eval", 1)):
    b = subject_batch(s, 8, split, seed=seed, **kw)
    if s == "smollm2":
        b.pop("labels", None)  # next-token loss from input_ids
    np.savez(f"{s}.{split}.npz", **b)
PY
  onnx-amp export "$s" -o "$s.onnx" > "$s.log" 2>&1
  onnx-amp partition "$s.onnx" -o "$s.p.onnx" >> "$s.log" 2>&1
  onnx-amp calibrate "$s.p.onnx" --calibration_data "$s.calib.npz" --no_progress -o "$s.c.onnx" >> "$s.log" 2>&1
  onnx-amp profile "$s.c.onnx" --target cpu --measure --seq_len 64 --repeats 5 -o "$s.g.onnx" >> "$s.log" 2>&1
  echo "$s: exported, partitioned, calibrated and profiled in $(( $(date +%s) - t0 )) s"
  for st in ip ip-pairs greedy prefix random pareto-greedy uniform-high uniform-low; do
    t0=$(date +%s)
    onnx-amp solve "$s.g.onnx" --strategy "$st" --tau_relative 0.05 --eval_data "$s.eval.npz" \
      -o "$s.$st.onnx" --plan "$s.$st.plan.json" > "$s.$st.log" 2>&1
    echo "$s $st: $(( $(date +%s) - t0 )) s, $(grep -E 'units lowered' "$s.$st.log" | sed 's/^ *//')"
  done
done

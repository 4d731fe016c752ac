#!/usr/bin/env bash
# GPU check of the trainer configs: trainer=gpu (bf16-mixed), trainer=ddp and trainer=fsdp on the GPUs of one
# machine, then OAIF runs sampling on the GPU with `generate` and with alignlab's decode loop, and the sampling
# benchmark on the GPU. Each training run prints its final metrics and training tokens/s.
#   bash benchmarks/gpu_check.sh                    # SmolLM2-135M-Instruct (the default model)
#   MODEL="model=hf model.name_or_path=..." bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
TRAIN=(python3 -c "import sys; sys.argv[0] = 'alignlab-train'; from alignlab.cli import train; train()")
read -r -a MODEL <<< "${MODEL:-model=smollm2}"
ROOT=${ROOT:-outputs/gpu_check}
STEPS=${STEPS:-30}
DEVICES=${DEVICES:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
report() {  # run folder -> one line of figures
  python3 - "$1" <<'PY'
import json, sys
from pathlib import Path
s = json.loads((Path(sys.argv[1]) / "summary.json").read_text())
m = s["metrics"]
print(f"  step {s['global_step']}: train/loss {m.get('train/loss', float('nan')):.4f}, val/rewards/accuracies "
      f"{m.get('val/rewards/accuracies', float('nan')):.3f}, train tokens/s {m.get('train/tokens_per_sec', float('nan')):.0f}")
PY
}
status=0
for trainer in gpu ddp fsdp; do
  echo "== trainer=$trainer devices=$DEVICES"
  out=$ROOT/$trainer
  if "${TRAIN[@]}" "${MODEL[@]}" trainer=$trainer trainer.devices=$DEVICES trainer.max_steps=$STEPS \
      trainer.enable_progress_bar=false save_policy=false paths.output_dir=$out > $ROOT.$trainer.log 2>&1; then
    report $out
  else
    status=1; echo "  FAILED:"; tail -n 25 $ROOT.$trainer.log
  fi
done
for backend in hf loop; do
  echo "== objective=oaif trainer=gpu data.sampling.backend=$backend"
  out=$ROOT/oaif_$backend
  if "${TRAIN[@]}" "${MODEL[@]}" objective=oaif trainer=gpu trainer.max_steps=5 trainer.enable_progress_bar=false \
      data.sampling.backend=$backend save_policy=false paths.output_dir=$out > $ROOT.oaif_$backend.log 2>&1; then
    report $out
  else
    status=1; echo "  FAILED:"; tail -n 25 $ROOT.oaif_$backend.log
  fi
done
echo "== sampling alone on the GPU: benchmarks/bench_sampling.py --device cuda (hf and loop; the others are CPU-only)"
if ! python3 benchmarks/bench_sampling.py --device cuda --batch-sizes 1,8,32 --check-greedy 16 \
    --out $ROOT/bench_sampling_cuda.json > $ROOT.bench_sampling.log 2>&1; then
  status=1; echo "  FAILED:"; tail -n 25 $ROOT.bench_sampling.log
else
  sed -n '/^settings:/,$p' $ROOT.bench_sampling.log
fi
exit $status

#!/usr/bin/env bash
# GPU check of the trainer configs: trainer=gpu (bf16-mixed), trainer=ddp and trainer=fsdp on the GPUs of one
# machine, then one OAIF run (sampling on the GPU). Each prints its final metrics and training tokens/s.
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
echo "== objective=oaif trainer=gpu"
out=$ROOT/oaif
if "${TRAIN[@]}" "${MODEL[@]}" objective=oaif trainer=gpu trainer.max_steps=5 trainer.enable_progress_bar=false \
    save_policy=false paths.output_dir=$out > $ROOT.oaif.log 2>&1; then
  report $out
else
  status=1; echo "  FAILED:"; tail -n 25 $ROOT.oaif.log
fi
exit $status

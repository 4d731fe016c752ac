#!/usr/bin/env bash
# Miniature DPO-family reproduction on SmolLM2-135M-Instruct (2 CPU cores): 3 losses x 2 betas, then held-out
# evaluation of every run, then the table and plot. Writes under experiments/dpo_family/runs/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/dpo_family/runs
BIN=.venv/bin
if ! ls $ROOT/multirun/*/*/*/policy >/dev/null 2>&1; then
  $BIN/alignlab-train -m experiment=dpo_family loss=sigmoid,ipo,hinge loss.beta=0.1,0.5 paths.root=$ROOT \
    trainer.enable_progress_bar=false
fi
for run in $(ls -d $ROOT/multirun/*/*/*/ | sort); do
  [ -f "$run/eval/eval.json" ] && continue  # evaluated earlier
  # Quoted: multirun folder names hold '=' and ',', which Hydra's override grammar would parse.
  $BIN/alignlab-eval "policy_path='$run'" "paths.output_dir='$run/eval'" generate.num_prompts=30 \
    sampling.max_new_tokens=64
done
$BIN/python experiments/dpo_family/report.py $ROOT
# The same runs through the generic comparison tool: table (Markdown, CSV) and learning curves.
$BIN/alignlab-compare $ROOT --by loss,loss.beta --out experiments/dpo_family/compare \
  --metrics val/rewards/accuracies,val/rewards/margins,train/loss,eval/samples/policy/reward,eval/samples/policy/kl_to_reference

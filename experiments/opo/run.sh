#!/usr/bin/env bash
# Miniature OPO on SmolLM2-135M-Instruct (2 CPU cores) with the bundled Quillhaven bylaws. Writes under
# experiments/opo/runs/; resumable (a run with results.json is kept).
#  1. generated questions: template cloze questions from every rule, checked;
#  2. option-likelihood scoring, BM25: every condition for human and generated questions, and the edit demonstration;
#  3. the same with dense retrieval (top-k rows only: the other conditions do not depend on the retriever);
#  4. letter-logit scoring (4 option orders), BM25, human questions: no rules, top-3, gold.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/opo/runs
BIN=.venv/bin
[ -f "$ROOT/questions/questions.jsonl" ] || $BIN/alignlab-opo-questions generator.per_rule=2 \
  paths.output_dir=$ROOT/questions
GEN=questions.generated=$ROOT/questions/questions.jsonl
[ -f "$ROOT/likelihood_bm25/results.json" ] || $BIN/alignlab-opo scorer=likelihood retriever=bm25 $GEN \
  paths.output_dir=$ROOT/likelihood_bm25
[ -f "$ROOT/likelihood_dense/results.json" ] || $BIN/alignlab-opo scorer=likelihood retriever=dense $GEN \
  "conditions=[top]" edits=null paths.output_dir=$ROOT/likelihood_dense
[ -f "$ROOT/letter_bm25/results.json" ] || $BIN/alignlab-opo scorer=letter retriever=bm25 questions.generated=null \
  "conditions=[none,top,gold]" "ks=[3]" edits=null paths.output_dir=$ROOT/letter_bm25
$BIN/python experiments/opo/report.py $ROOT

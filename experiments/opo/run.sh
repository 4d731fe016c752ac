#!/usr/bin/env bash
# Miniature OPO on SmolLM2-135M-Instruct (2 CPU cores) with the bundled Quillhaven bylaws. Writes under
# experiments/opo/runs/; resumable (a run with results.json is kept).
#  1. generated questions: template cloze questions from every rule, checked;
#  2. option-likelihood scoring, BM25: no rules, top-1, top-3, gold, 3 random rules, for human and generated
#     questions, and the edit demonstration;
#  3. the top-3 row again with dense retrieval (the other conditions do not depend on the retriever);
#  4. letter-logit scoring (4 option orders averaged), human questions: no rules and gold.
# (k and the conditions are cut to what 2 CPU cores do in about half an hour; drop the overrides for the full set.)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/opo/runs
BIN=.venv/bin
[ -f "$ROOT/questions/questions.jsonl" ] || $BIN/alignlab-opo-questions opo_questions.generator.per_rule=2 \
  paths.output_dir=$ROOT/questions
GEN=questions.generated=$ROOT/questions/questions.jsonl
[ -f "$ROOT/likelihood_bm25/results.json" ] || $BIN/alignlab-opo opo/scorer=likelihood opo/retriever=bm25 $GEN \
  "ks=[1,3]" paths.output_dir=$ROOT/likelihood_bm25
[ -f "$ROOT/likelihood_dense/results.json" ] || $BIN/alignlab-opo opo/scorer=likelihood opo/retriever=dense $GEN \
  "conditions=[top]" "ks=[3]" edits=null paths.output_dir=$ROOT/likelihood_dense
[ -f "$ROOT/letter_bm25/results.json" ] || $BIN/alignlab-opo opo/scorer=letter opo/retriever=bm25 questions.generated=null \
  "conditions=[none,gold]" edits=null paths.output_dir=$ROOT/letter_bm25
$BIN/python experiments/opo/report.py $ROOT

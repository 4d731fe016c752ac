#!/usr/bin/env bash
# Miniature OPO on SmolLM2-135M-Instruct (2 CPU cores) with the bundled Quillhaven bylaws: the table of conditions
# (no rules, top-k retrieved, gold rule, random rules) for human-written and generated questions with BM25, the
# top-k rows again with dense retrieval, and the edit demonstration. Writes under experiments/opo/runs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=experiments/opo/runs
BIN=.venv/bin
# Generated questions: template cloze questions from every rule, checked (alignlab/opo/bundled/ holds this output).
[ -f "$ROOT/questions/questions.jsonl" ] || $BIN/alignlab-opo-questions generator.per_rule=2 \
  paths.output_dir=$ROOT/questions
GEN=questions.generated=$ROOT/questions/questions.jsonl
[ -f "$ROOT/bm25/results.json" ] || $BIN/alignlab-opo retriever=bm25 $GEN paths.output_dir=$ROOT/bm25
[ -f "$ROOT/dense/results.json" ] || $BIN/alignlab-opo retriever=dense $GEN "conditions=[top]" edits=null \
  paths.output_dir=$ROOT/dense
$BIN/python experiments/opo/report.py $ROOT

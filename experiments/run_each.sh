# The loop every reproduction's run.sh shares (sourced, not run): `run_each RUNS ROOT DONE FUNCTION`.
#
# For each line `<name> <words...>` of the file RUNS (blank lines and `#` comments skipped), in order:
# - skip the run when ROOT/<name>/ holds one of the files DONE names (`|`-separated: "summary.json|pairs.jsonl"),
#   so that a rerun resumes where an interrupted one stopped;
# - move an unfinished ROOT/<name>/ aside to ROOT/<name>.interrupted.<time> (a new run must not mix with it);
# - call `FUNCTION <name> <words...>` with stdin closed, with `$ROOT` in the words replaced by ROOT;
# - append `== <name>: <seconds> s` to ROOT/wall_times.txt: the wall time as this script ran it.
# Ends with `== run.sh, all runs it started: <seconds> s` (this invocation's time, not the runs' total) when it
# started any. Word splitting only, no filename expansion, so that overrides such as `conditions=[top]` pass through
# unchanged; a `#` starts a comment only at the start of a line.
run_each() {
  local -  # the `set -f` below ends with the function
  set -f
  local runs=$1 root=$2 done=$3 fn=$4 started=0 name rest marker finished start
  mkdir -p "$root"
  while read -r name rest || [[ -n $name ]]; do  # a last line without a newline counts too
    [[ -z $name || $name == \#* ]] && continue
    finished=0
    for marker in ${done//|/ }; do if [ -f "$root/$name/$marker" ]; then finished=1; fi; done
    if [ "$finished" = 1 ]; then
      echo "== $name: finished earlier, kept"
      continue
    fi
    if [ -d "$root/$name" ]; then mv "$root/$name" "$root/$name.interrupted.$(date +%s)"; fi
    rest=${rest//\$ROOT/"$root"}  # quoted: an & in the path stays an &
    echo "== $name: $rest"
    start=$SECONDS started=1
    # shellcheck disable=SC2086  # the words are overrides
    "$fn" "$name" $rest </dev/null
    echo "== $name: $((SECONDS - start)) s" | tee -a "$root/wall_times.txt"
  done <"$runs"
  if [ "$started" = 1 ]; then echo "== run.sh, all runs it started: $SECONDS s" | tee -a "$root/wall_times.txt"; fi
}

# `train_then_eval NAME OVERRIDES...`, the run of the reproductions that train and then evaluate: alignlab-train
# experiment=$EXPERIMENT OVERRIDES into $ROOT/NAME (no checkpoints, no progress bar), then alignlab-eval of that
# run into $ROOT/NAME/eval with the overrides of the array EVAL, then the saved weights are deleted (540 MB for
# SmolLM2; the records say what they did), as are those an interrupted attempt left in $ROOT/NAME.interrupted.*.
# Reads BIN, ROOT, EXPERIMENT, EVAL and, if set, TRAIN_EXTRA (more training overrides) from the calling script.
train_then_eval() {
  local name=$1
  shift
  find "$ROOT" -maxdepth 2 -type d -path "$ROOT/$name.interrupted.*/policy" -exec rm -rf {} +
  "$BIN/alignlab-train" experiment="$EXPERIMENT" "$@" paths.output_dir="$ROOT/$name" \
    trainer.enable_progress_bar=false +trainer.enable_checkpointing=false "~callbacks.checkpoint" \
    ${TRAIN_EXTRA[@]+"${TRAIN_EXTRA[@]}"}
  "$BIN/alignlab-eval" policy_path="$ROOT/$name" paths.output_dir="$ROOT/$name/eval" "${EVAL[@]}"
  rm -rf "${ROOT:?}/$name/policy"
}

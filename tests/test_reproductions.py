"""The commands of the paper reproductions (experiments/*/run.sh) compose with the current config tree: every
override they pass names a key that exists. (The OPO experiment's commands are composed in tests/test_opo.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from alignlab.records import read_records

from .conftest import compose_config

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
OAIF = EXPERIMENTS / "oaif"
OAIF_EARLIER = OAIF / "earlier" / "smollm2_annotator" / "runs"  # the first design's committed runs
# What experiments/oaif/run.sh adds to every training command.
OAIF_TRAIN_EXTRA = ["trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false", "save_policy=false",
                    "~callbacks.checkpoint", "callbacks.win_rate.reference_cache=experiments/oaif/reference_answers"]


def oaif_runs() -> list[tuple[str, str, list[str]]]:
    """(name, command, overrides) of every line of experiments/oaif/runs.txt, which run.sh reads."""
    runs = []
    for line in (OAIF / "runs.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command, *overrides = line.split()
            runs.append((name, command, [o.replace("$ROOT", "experiments/oaif/runs") for o in overrides]))
    return runs


COUNTERFACTUAL = OAIF.parent / "counterfactual_dpo"
# What experiments/counterfactual_dpo/run.sh adds to every training and evaluation command.
COUNTERFACTUAL_TRAIN_EXTRA = ["trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
                              "~callbacks.checkpoint", "data.cache_dir=$HERE/answers"]
COUNTERFACTUAL_EVAL = ["generate.num_prompts=100", "sampling.max_new_tokens=80",
                       "generate.reference_cache=$HERE/reference_answers"]


def runs_file(experiment: str) -> list[tuple[str, list[str]]]:
    """(name, overrides) of every line of experiments/<experiment>/runs.txt, which its run.sh reads."""
    return [(line.split()[0], line.split()[1:]) for line in (EXPERIMENTS / experiment / "runs.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def counterfactual_runs() -> list[tuple[str, list[str]]]:
    return runs_file("counterfactual_dpo")


def dpo_family_runs() -> list[tuple[str, list[str]]]:
    return runs_file("dpo_family")


# What experiments/dpo_family/run.sh adds to every training and evaluation command.
DPO_FAMILY_TRAIN_EXTRA = ["trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
                          "~callbacks.checkpoint"]
DPO_FAMILY_EVAL = ["generate.num_prompts=100", "generate.n_samples=4", "sampling.batch_size=32",
                   "sampling.max_new_tokens=64", "sampling.backend=packed",
                   "generate.reference_cache=experiments/dpo_family/reference_answers"]
EVAL = [DPO_FAMILY_EVAL, COUNTERFACTUAL_EVAL]


@pytest.mark.parametrize("overrides", EVAL, ids=lambda o: " ".join(o))
def test_evaluation_commands_compose(overrides):
    overrides = [o.replace("$HERE", "experiments/counterfactual_dpo") for o in overrides]
    cfg = compose_config("eval", ["policy_path=somewhere", *overrides])
    assert cfg.generate.enabled and cfg.sampling.max_new_tokens in (64, 80)


def test_dpo_family_run_sh_reads_the_runs_file():
    script = (EXPERIMENTS / "dpo_family" / "run.sh").read_text() + (EXPERIMENTS / "run_each.sh").read_text()
    assert "runs.txt" in script and "EXPERIMENT=dpo_family" in script and "run_each" in script
    assert all(extra in script for extra in DPO_FAMILY_TRAIN_EXTRA + DPO_FAMILY_EVAL)
    grid = {(o[0], o[1]) for _, o in dpo_family_runs()}
    assert {("loss=sigmoid", "loss.beta=0.1"), ("loss=ipo", "loss.beta=0.5"), ("loss=hinge", "loss.beta=0.1")} <= grid


@pytest.mark.parametrize("name, overrides", dpo_family_runs(), ids=[r[0] for r in dpo_family_runs()])
def test_every_dpo_family_command_composes(name, overrides):
    """Every run trains on the same split (the split's seed is fixed, not the run's) and is named after its loss,
    beta and seed."""
    cfg = compose_config("train", ["experiment=dpo_family", *overrides, *DPO_FAMILY_TRAIN_EXTRA])
    assert cfg.objective.name == "dpo" and cfg.data.prompts.seed == 0 and cfg.data.prompts.val_fraction == 0.33
    assert name == f"{cfg.loss.name}_b{cfg.loss.beta}_seed{cfg.seed}"
    assert cfg.data.seed == cfg.seed and cfg.trainer.max_epochs == 3
    instantiate(cfg.loss)


def test_oaif_run_sh_reads_the_runs_file():
    script = (OAIF / "run.sh").read_text()
    assert "runs.txt" in script and "alignlab-$command" in script
    assert all(extra in script for extra in OAIF_TRAIN_EXTRA)
    assert {command for _, command, _ in oaif_runs()} == {"train", "generate"}
    # the committed reference answers the monitor reuses: the key it would compute names the monitor's settings
    keys = [json.loads(p.read_text()) for p in (OAIF / "reference_answers").rglob("*.key.json")]
    monitor = compose_config("train", ["experiment=oaif"]).callbacks.win_rate.sampling
    assert any(k["sampling"]["backend"] == monitor.backend and k["sampling"]["max_new_tokens"] == monitor.max_new_tokens
               for k in keys)


@pytest.mark.parametrize("name, command, overrides", oaif_runs(), ids=[r[0] for r in oaif_runs()])
def test_every_oaif_command_composes(name, command, overrides):
    """Both arms see the same split and are measured on the same held-out prompts; offline pairs come from the
    online arm's sampling settings and annotator, with every pair kept as the annotator labelled it."""
    if command == "generate":
        cfg = compose_config("generate", overrides)
        online = compose_config("train", ["experiment=oaif"])
        assert cfg.data.unfinished == "keep" and cfg.judge._target_ == online.judge._target_
        assert cfg.data.sampling == online.data.sampling
        assert (cfg.data.prompts.val_fraction, cfg.data.prompts.seed) == (0.25, 0)
        return
    cfg = compose_config("train", [*overrides, *OAIF_TRAIN_EXTRA])
    assert "checkpoint" not in cfg.callbacks and cfg.save_policy is False and not cfg.trainer.enable_checkpointing
    monitor = cfg.callbacks.win_rate
    assert (monitor.num_prompts, monitor.n_samples, monitor.every_n_steps) == (64, 3, 28)
    assert (monitor.prompts.val_fraction, monitor.prompts.seed, cfg.data.prompts.seed) == (0.25, 0, 0)
    assert cfg.data.seed == cfg.seed  # one split for every seed; order and samples still the run's
    assert cfg.trainer.max_steps == 84 and f"seed{cfg.seed}" in name
    if cfg.objective.name == "oaif":
        assert cfg.data.unfinished == "keep" and cfg.data.prompts.val_fraction == 0.25
        judge = cfg.judge.get("judge", cfg.judge)  # the word budget wraps the same annotator
        assert judge._target_.endswith("ReferenceSimilarityJudge")
        arm = name.rsplit("_seed", 1)[0]
        assert cfg.judge.get("max_words") == {"short": 20, "very_short": 8}.get(arm)
        # the length arms share a base annotator without a brevity preference; the online arm compares answers
        assert judge.unit == ("best_sentence" if arm in ("helpful", "short", "very_short") else "answer")
    else:
        assert cfg.data.prompts.path.endswith("/pairs.jsonl")


def test_counterfactual_run_sh_reads_the_runs_file():
    script = (COUNTERFACTUAL / "run.sh").read_text() + (EXPERIMENTS / "run_each.sh").read_text()
    assert "runs.txt" in script and "EXPERIMENT=counterfactual_dpo" in script and "run_each" in script
    assert all(extra in script for extra in COUNTERFACTUAL_TRAIN_EXTRA + COUNTERFACTUAL_EVAL)


@pytest.mark.parametrize("name, overrides", counterfactual_runs(), ids=[r[0] for r in counterfactual_runs()])
def test_every_counterfactual_command_composes(name, overrides):
    """Every run sees the same split and the same cached answers (the sampling seed is fixed, not the run's), and
    its variant can be built from its behaviour's instructions; the prompt trained on and the control answers
    carry the neutral system prompt unless the run's name says it uses the default one for both (``_default_seed``)
    or for one of them (``_default_prompt_``, ``_default_answers_``)."""
    extra = [o.replace("$HERE", "experiments/counterfactual_dpo") for o in COUNTERFACTUAL_TRAIN_EXTRA]
    cfg = compose_config("train", ["experiment=counterfactual_dpo", *overrides, *extra])
    data = cfg.data
    assert (data.prompts.path.endswith("open_questions.jsonl"), data.prompts.val_fraction, data.prompts.seed,
            data.sampling.seed) == (True, 0.25, 0, 0)
    assert data.seed == cfg.seed and f"seed{cfg.seed}" in name
    assert (data.prompts.system_prompt is None) == ("_default_seed" in name or "_default_prompt_" in name)
    assert (data.control_system_prompt is None) == ("_default_seed" in name or "_default_answers_" in name)
    behavior = instantiate(cfg.behavior)
    behavior.require(data.variant)
    assert behavior.measure is not None


def _load_report(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_report", OAIF.parent / name / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_counterfactual_run(root: Path, name: str, seed: int, trained: list[float], system_prompt,
                             **control_system_prompt) -> None:
    """A run folder as run.sh leaves it: config, eval.json, behaviour and capability records on 4 prompts.
    ``control_system_prompt=...``: the config names it (runs from before the key do not)."""
    import json

    run = root / name
    (run / "eval" / "records").mkdir(parents=True)
    data = {"prompts": {"system_prompt": system_prompt}, **control_system_prompt}
    OmegaConf.save(OmegaConf.create({"seed": seed, "data": data}), run / "config.yaml")
    (run / "eval" / "eval.json").write_text(json.dumps(
        {"rewards/accuracies": 0.9, "behavior": {"behavior": "spanish", "variant": "enc"}}))
    arms = {"policy": trained, "reference": [0.0] * 4, "reference_encourage": [1.0, 1.0, 0.0, 1.0]}
    with (run / "eval" / "records" / "behavior.jsonl").open("w") as f:
        for arm, measures in arms.items():
            for i, m in enumerate(measures):
                answer = f"{arm} answer {i}" + (" (resampled)" if arm != "policy" and i == 3 and seed else "")
                f.write(json.dumps({"prompt_id": f"q{i}", "sample": 0, "arm": arm, "measure": m, "length": 10 + i,
                                    "answer": answer, "finished": arm == "policy" or i == 0}) + "\n")
    with (run / "eval" / "records" / "capability.jsonl").open("w") as f:
        for arm, correct in (("policy", [1, 1, 0, 1]), ("reference", [1, 0, 0, 1])):
            for i, c in enumerate(correct):
                f.write(json.dumps({"prompt_id": f"f{i}", "arm": arm, "correct": float(c),
                                    "margin": 1.0 if c else -1.0}) + "\n")


def test_counterfactual_report_pools_seeds_and_pairs_prompts(tmp_path):
    """Seeds are pooled per prompt before the bootstrap; the default-system-prompt run appears only in the
    confound table, paired with the neutral run of the same seed."""
    report = _load_report("counterfactual_dpo")
    root = tmp_path / "runs"
    _fake_counterfactual_run(root, "spanish_enc_seed0", 0, [1.0, 0.0, 0.0, 1.0], "Always answer.")
    _fake_counterfactual_run(root, "spanish_enc_seed1", 1, [1.0, 1.0, 0.0, 1.0], "Always answer.")
    _fake_counterfactual_run(root, "spanish_enc_default_seed0", 0, [0.0, 0.0, 0.0, 0.0], None)
    _fake_counterfactual_run(root, "spanish_enc_default_answers_seed1", 1, [1.0, 1.0, 1.0, 1.0], "Always answer.",
                             control_system_prompt=None)
    (root / "wall_times.txt").write_text("== spanish_enc_seed0: 600 s\n")
    text = report.main(root, tmp_path)
    behaviour = next(line for line in text.splitlines() if line.startswith("| spanish | enc | 0, 1 |"))
    cells = [c.strip() for c in behaviour.strip("|").split("|")]
    # per-prompt means over the two seeds: 1, 0.5, 0, 1 -> 0.625; the base: 0; told: 0.75
    assert cells[4].startswith("0 ") and cells[5].startswith("0.75 ") and cells[6].startswith("0.625 ")
    assert cells[7].startswith("+0.625 ") and cells[10] == "0.50, 0.75"  # each seed's own rate
    assert cells[11] == "1.00 / 0.25"  # every trained answer ended, one of the base model's four
    # interval excludes 0 and both seeds agree, but 4 prompts cannot give a sign-flip p below 0.05
    assert cells[12] == "no: p >= 0.05/1"
    confound = next(line for line in text.splitlines() if line.startswith("| spanish | enc | default | 0 |"))
    cells = [c.strip() for c in confound.strip("|").split("|")]
    assert cells[6].startswith("-0.5 ")  # default (0) minus neutral seed 0 (0.5) on the same prompts
    assert cells[7] == "-0.50" and cells[9] == "no: interval holds 0, one seed, p >= 0.05/2"  # 4 prompts, 2 rows
    # the ablation: trained on the neutral prompt, control answers under the default one; against neutral seed 1
    ablation = next(line for line in text.splitlines()
                    if line.startswith("| spanish | enc | neutral prompt, default answers | 1 |"))
    cells = [c.strip() for c in ablation.strip("|").split("|")]
    assert cells[4].startswith("0.75 [") and cells[5].startswith("1 [") and cells[7] == "+0.25"
    capability = next(line for line in text.splitlines() if line.startswith("| spanish | enc | neutral |"))
    assert "0.75 [" in capability and "+0.25 [" in capability
    every_run = next(line for line in text.splitlines() if line.startswith("| every run |"))
    assert "| 4 runs | 0.75 [" in every_run and "| 0.5 [" in every_run and "+0.25 [" in every_run
    assert "| spanish_enc_seed0 | 10.0 |" in text and (tmp_path / "results.png").is_file()
    # each run alone: seed 1's trained rate 0.75, +0.75 over the base, capability +0.25
    assert "| spanish | enc | neutral | 1 | 0.75 [" in text and "| 0.900 | +0.25 [" in text
    # seed 1's base answer to the last prompt differs from seed 0's, in both base arms
    assert "| spanish | enc | neutral | reference | 0, 1 | 3 of 4 | 13.0 / 13.0 |" in text
    assert "| spanish | enc | neutral | reference_encourage | 0, 1 | 3 of 4 |" in text


def test_counterfactual_claim_rule_names_what_fails():
    from alignlab.stats import PairedDifference
    claim = _load_report("counterfactual_dpo").claim
    resolved = PairedDifference(0.07, 0.035, 0.115, 0.001, 100, 0, 0)
    assert claim(resolved, [0.02, 0.12], 8) == "yes"
    assert claim(resolved, [0.12], 8) == "no: one seed"
    assert claim(resolved, [0.0, 0.14], 8) == "no: not every seed shares its sign"
    assert claim(resolved, [0.02, 0.12], 100) == "no: p >= 0.05/100"
    unresolved = PairedDifference(0.02, -0.01, 0.05, 0.51, 100, 0, 0)
    assert claim(unresolved, [-0.01, 0.05], 8) == "no: interval holds 0, not every seed shares its sign, p >= 0.05/8"


def test_run_each_resumes_moves_an_interrupted_run_aside_and_times_each_run(tmp_path):
    """experiments/run_each.sh, which every run.sh sources: finished runs are kept, an unfinished folder is moved
    aside before its run starts again, overrides reach the command unchanged ($ROOT replaced, brackets not
    expanded), each run's wall time is logged, and a failing run stops the script."""
    root = tmp_path / "runs&more"  # an & that bash 5.2's pattern substitution must not replace
    (root / "done").mkdir(parents=True)
    (root / "done" / "result.json").write_text("{}")
    (root / "half").mkdir()
    (root / "half" / "partial.txt").write_text("")
    (tmp_path / "conditions=t").write_text("")  # what conditions=[top] would glob to
    (tmp_path / "runs.txt").write_text("# a comment\n\ndone a=1\nhalf conditions=[top] path=$ROOT/x\nnew b=2")
    script = f"""set -euo pipefail
source {EXPERIMENTS / "run_each.sh"}
one() {{ mkdir -p '{root}'/"$1"; printf '%s\\n' "$@" > '{root}'/"$1/args.txt"; [ "$1" != fail ] || return 3
         echo '{{}}' > '{root}'/"$1/result.json"; }}
run_each runs.txt '{root}' "result.json|other.json" one
"""
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "== done: finished earlier, kept" in done.stdout and not (root / "done" / "args.txt").exists()
    assert (root / "half" / "args.txt").read_text().split() == ["half", "conditions=[top]", f"path={root}/x"]
    moved = [p for p in root.iterdir() if p.name.startswith("half.interrupted.")]
    assert len(moved) == 1 and (moved[0] / "partial.txt").exists()
    times = (root / "wall_times.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in times] == ["== half", "== new", "== run.sh, all runs it started"]

    (tmp_path / "runs.txt").write_text("fail c=3\nafter d=4\n")
    failed = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert failed.returncode == 3 and not (root / "after").exists()


def _fake_dpo_run(root: Path, name: str, loss: str, beta: float, seed: int, policy_rewards: list[float]) -> None:
    """A run folder as experiments/dpo_family/run.sh leaves it: config, metrics, eval.json, records on 3
    questions x 2 samples (reference rewards 0, 0.5, 1 per question), 2 held-out pairs."""
    import json

    run = root / name
    (run / "eval" / "records").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "loss": {"name": loss, "beta": beta}}), run / "config.yaml")
    (run / "metrics.csv").write_text(  # as Lightning's CSV logger: training rows, then validation rows (the
        "epoch,step,train/rewards/margins,val/rewards/margins\n"  # sanity check's at step 0, then each epoch's end)
        + "".join(f"{s // 3},{s},{beta * (s + 1)},\n" for s in range(6))
        + f"0,0,,{beta * 9}\n0,2,,{beta * 1.5}\n1,5,,{beta * 3}\n")
    (run / "eval" / "eval.json").write_text("{}")
    with (run / "eval" / "records" / "eval.jsonl").open("w") as f:
        for i in range(3):
            for sample in range(2):
                for arm, reward in (("policy", policy_rewards[i]), ("reference", i / 2)):
                    row = {"prompt_id": f"q{i}", "arm": arm, "sample": sample, "reward": reward,
                           "correct": float(reward >= 1), "reward_parts": {"concise": 0.25}, "length": 10}
                    if arm == "policy":
                        row["log_ratio"] = 2.0 * (sample + 1)
                    f.write(json.dumps(row) + "\n")
    with (run / "eval" / "records" / "pairs.jsonl").open("w") as f:
        for i, margin in enumerate((beta * 4, -beta * 2)):
            f.write(json.dumps({"prompt_id": f"p{i}", "arm": "policy", "margin": margin, "h": margin / beta,
                                "ranked": margin > 0}) + "\n")


def test_dpo_family_report_pairs_questions_pools_seeds_and_compares_betas(tmp_path):
    report = _load_report("dpo_family")
    root = tmp_path / "runs"
    _fake_dpo_run(root, "ipo_b0.5_seed0", "ipo", 0.5, 0, [1.0, 1.0, 1.0])
    _fake_dpo_run(root, "ipo_b0.5_seed1", "ipo", 0.5, 1, [0.0, 0.5, 1.0])
    _fake_dpo_run(root, "ipo_b0.1_seed0", "ipo", 0.1, 0, [0.5, 0.5, 0.5])
    _fake_dpo_run(root, "ipo_b0.1_seed1", "ipo", 0.1, 1, [1.0, 1.0, 1.0])
    _fake_dpo_run(root, "ipo_b1.0_seed0", "ipo", 1.0, 0, [0.25, 0.25, 0.25])
    text = report.main(root, tmp_path)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| ipo | 0.5 | 0, 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # per question, seeds pooled: policy 0.5, 0.75, 1 against the reference's 0, 0.5, 1
    assert cells[3].startswith("0.75 [") and cells[4].startswith("+0.25 [")
    assert cells[5] == "+0.500, +0.000"  # each seed's own paired difference
    assert cells[7] == "+0 [0, 0] (p=1)"  # the concise part, 0.25 on both sides
    assert cells[8].startswith("0.667 [") and cells[9].startswith("3 [")  # wins 1, 0.75, 0.5; KL (2 + 4) / 2
    h_row = next(line for line in lines if line.startswith("| ipo | 0.5 | 0, 1 | 0.5 ["))
    assert "| 1 [" in h_row and "| 1 |" in h_row and "5.50, 5.50" in h_row  # h 4 and -2; target 1; steps 4, 5 -> h 5, 6
    beta = next(line for line in lines if line.startswith("| ipo | 0.1 -> 0.5 | 0, 1 |"))
    cells = [c.strip() for c in beta.strip("|").split("|")]
    # seed 0: 1 - 0.5, seed 1: 0.5 - 1; pooled per question: 0.5 - 0.75, 0.75 - 0.75, 1 - 0.75
    assert cells[5].startswith("+0 [") and cells[6] == "+0.5, -0.5"
    assert cells[3].startswith("+0 [") and cells[4] == "+0, +0"  # every policy's log-ratio is the same
    assert "| -0.75 [" in next(line for line in lines if line.startswith("| ipo | 0.5 -> 1 | 0 |"))
    widest = next(line for line in lines if line.startswith("| ipo | 0.1 -> 1 | 0 |"))  # three betas: the ends too
    assert "| -0.25 [" in widest  # 0.25 - 0.5 on every question
    assert "| ipo | 0.5 | 1 | +0 [" in text  # seed 1 alone equals the reference
    assert "| 1.50, 3.00 |" in text  # held-out h after each epoch, the sanity check's step-0 row left out
    assert (tmp_path / "results.png").is_file()


def test_train_then_eval_trains_evaluates_and_deletes_the_weights(tmp_path):
    """run_each.sh's train_then_eval, with stand-ins for the two commands that log their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("train", "eval"):
        script = bin_dir / f"alignlab-{command}"
        script.write_text(f"#!/usr/bin/env bash\necho {command} \"$@\" >> {tmp_path}/calls.txt\n"
                          + (f"mkdir -p {tmp_path}/runs/r1/policy\n" if command == "train" else ""))
        script.chmod(0o755)
    (tmp_path / "runs.txt").write_text("r1 loss=ipo seed=1\n")
    (tmp_path / "runs" / "r1" / "policy").mkdir(parents=True)  # an attempt interrupted after training
    script = f"""set -euo pipefail
source {EXPERIMENTS / "run_each.sh"}
BIN={bin_dir} ROOT={tmp_path}/runs EXPERIMENT=dpo_family
EVAL=(generate.n_samples=4 "sampling.max_new_tokens=64")
run_each runs.txt "$ROOT" eval/eval.json train_then_eval
"""
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    train, evaluate = (tmp_path / "calls.txt").read_text().splitlines()
    assert train.split()[:4] == ["train", "experiment=dpo_family", "loss=ipo", "seed=1"]
    assert f"paths.output_dir={tmp_path}/runs/r1" in train.split() and "~callbacks.checkpoint" in train.split()
    assert evaluate.split() == ["eval", f"policy_path={tmp_path}/runs/r1", f"paths.output_dir={tmp_path}/runs/r1/eval",
                                "generate.n_samples=4", "sampling.max_new_tokens=64"]
    assert not (tmp_path / "runs" / "r1" / "policy").exists()
    interrupted = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("r1.interrupted.")]
    assert len(interrupted) == 1 and not (interrupted[0] / "policy").exists()  # its weights deleted, the folder kept


def test_oaif_report_pairs_an_extra_online_arm_with_the_online_arm(tmp_path):
    """An extra arm (runs.txt section 2) is found by its folder name and paired with online_seed<s> by prompt: a
    copy of the online run's records with every answer one token longer differs from it by exactly +1 in length
    and 0 in win rate, reward and correct answers; an extra arm without an online run of its seed is left unpaired."""
    report = _load_report("oaif")
    records = read_records(OAIF_EARLIER / "online_seed0" / "records" / "monitor.jsonl")
    for name, longer in (("online_seed0", 0), ("online_ipo_seed0", 1), ("online_other_seed7", 0)):
        (tmp_path / name / "records").mkdir(parents=True)
        records.assign(length=records["length"] + longer).to_json(tmp_path / name / "records" / "monitor.jsonl",
                                                                  orient="records", lines=True)
        (tmp_path / name / "summary.json").write_text("{}")
    frames = {("online", 0): report.monitor(tmp_path, "online", 0)}
    assert report.extra_arms(tmp_path) == {"online_ipo": [0], "online_other": [7]}
    lines = report.extra_arm_lines(tmp_path, frames, 28)
    row = next(line for line in lines[2].splitlines() if line.startswith("| online_ipo | 0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == cells[5] == cells[7] == "+0 [0, 0] (p=1)" and cells[9].startswith("+1 [1, 1] (p<0.001)")
    other = next(line for line in lines[2].splitlines() if line.startswith("| online_other | 7 |"))
    assert other.count("| - ") == 4


def test_oaif_report_length_control_orders_the_instructions_by_length(tmp_path):
    """The length section pairs the three instructions by prompt: copies of one run's records with every answer 5
    and 10 tokens shorter give steps of exactly -5 and a trend of -5 tokens per instruction; the training lengths
    come from each run's metrics.csv, per epoch of 28 updates; the annotator is named from config.yaml."""
    report = _load_report("oaif")
    records = read_records(OAIF_EARLIER / "online_seed0" / "records" / "monitor.jsonl")
    for arm, shorter in (("helpful", 0), ("short", 5), ("very_short", 10)):
        run = tmp_path / f"{arm}_seed0"
        (run / "records").mkdir(parents=True)
        records.assign(length=records["length"] - shorter).to_json(run / "records" / "monitor.jsonl",
                                                                   orient="records", lines=True)
        (run / "summary.json").write_text("{}")
        (run / "config.yaml").write_text(
            "judge:\n  _target_: alignlab.judges.word_budget.WordBudgetJudge\n  max_words: 20\n"
            "  judge:\n    _target_: alignlab.judges.reference_similarity.ReferenceSimilarityJudge\n"
            "    temperature: 0.05\n")
        steps = list(range(56))  # as Lightning's CSV logger counts them: from 0; 29 batches in the first pass
        pd.DataFrame({"step": steps, "epoch": [int(s >= 29) for s in steps],
                      "train/online/mean_length": [40.0 - shorter - (s >= 29) for s in steps]}).to_csv(
            run / "metrics.csv", index=False)
    lines, curve, parts = report.length_control(tmp_path)
    text = "\n".join(lines)
    assert "| trend: slope per instruction step (helpful -> short -> very short) | -5 [-5, -5] | p<0.001 |" in text
    assert "| helpful and very short minus helpful and short | -5 [-5, -5] |" in text
    assert "| helpful and short | 35.0 | 34.0 |" in text
    seed_row = next(line for line in text.split("Each seed alone")[1].splitlines() if line.startswith("| 0 |"))
    assert seed_row.endswith("| -5 [-5, -5] (p<0.001) | -5 [-5, -5] (p<0.001) |")  # seed 0 alone, paired
    assert "WordBudgetJudge(max_words=20, ReferenceSimilarityJudge(temperature=0.05))" in text
    assert set(curve["arm"]) == {"helpful", "short", "very_short"} and parts["final"] == 28


def test_oaif_report_fit_table_averages_each_pass_and_leaves_out_step_zero(tmp_path):
    """The loss-per-pass table: the training loss is the mean of each epoch's steps, averaged over seeds; the
    held-out loss is read at each validation after step 0 (log 2 there by definition), one per pass, under the
    name of the arm's held-out pairs."""
    report = _load_report("oaif")
    for arm in ("online", "offline"):
        for seed, shift in ((0, 0.0), (1, 0.1)):
            run = tmp_path / f"{arm}_seed{seed}"
            run.mkdir()
            train = pd.DataFrame({"step": range(4), "epoch": [0, 0, 1, 1], "train/loss": [0.6, 0.4, 0.3, 0.1],
                                  "train/rewards/accuracies": [0.5, 0.5, 1.0, 1.0]})
            val = pd.DataFrame({"step": [0, 1, 3], "epoch": [0, 0, 1], "val/loss": [0.693, 0.5 + shift, 0.4 + shift],
                                "val/rewards/accuracies": [0.0, 0.6, 0.8]})
            pd.concat([train, val], ignore_index=True).to_csv(run / "metrics.csv", index=False)
    rows = report.fit_lines(tmp_path, [0, 1])[2].splitlines()[2:]
    assert "| offline (pairs from the initial model) | trained on | pass 1 | 0.500 | 0.500 |" in rows
    assert "| offline (pairs from the initial model) | trained on | pass 2 | 0.200 | 1.000 |" in rows
    assert "| online (OAIF) | held-out, sampled from the current policy | pass 1 | 0.550 | 0.600 |" in rows
    assert "| offline (pairs from the initial model) | held-out, sampled once from the initial model | pass 2 | 0.450 " \
           "| 0.800 |" in rows
    assert len(rows) == 8  # 2 arms x (2 training passes + 2 validations): step 0 left out

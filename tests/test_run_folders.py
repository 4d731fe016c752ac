"""One run per folder: a run refuses another run's folder, a resumed run must be the run it resumes, a multirun
given ``paths.output_dir`` makes it the sweep's root, DDP ranks of a multirun run their job (not the sweep), and
runs whose output goes to a file say how far they are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import open_dict

from alignlab.errors import ConfigError
from alignlab.progress import ProgressLog, log_generation_progress, progress_wanted
from alignlab.run_dir import changed_keys
from alignlab.train import run_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["debug=fast", "trainer.max_steps=1", "data.prompts.max_train=8", "data.prompts.max_val=4"]
# Two CPU processes on gloo; each rank writes the parameters it trains with (tests/rank_params.py).
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
       "+callbacks.rank_params._target_=tests.rank_params.RecordRankParams"]
PROGRESS_LINE = r"step (\d+)/(\d+) \| loss \d+\.\d{4} \| \d+ tokens/s \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``alignlab-train`` as ``python -m alignlab.cli``, on this checkout's code (children inherit PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "alignlab.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def only(paths) -> Path:
    (path,) = list(paths)
    return path


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- a run refuses another run's folder; a resumed run must be the same run --------------------------------------

def test_a_run_refuses_a_folder_holding_another_runs_results(make_cfg, tmp_path):
    cfg = make_cfg()
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("step,train/loss\n0,0.69\n")
    (folder / "config.yaml").write_text("loss: {name: ipo}\n")
    before = files(folder)
    with pytest.raises(ConfigError, match=re.escape(f"paths.output_dir={folder} already holds another run's "
                                                    "results (config.yaml, metrics.csv)")):
        run_train(cfg)
    other = tmp_path / "other" / "checkpoints" / "last.ckpt"  # resuming another run into it is no better
    other.parent.mkdir(parents=True)
    other.write_bytes(b"not read")
    with pytest.raises(ConfigError, match=re.escape(f"ckpt_path={other} is another run's checkpoint")):
        run_train(make_cfg(f"ckpt_path={other}"))
    assert files(folder) == before  # nothing written


def test_resuming_with_another_loss_names_the_key_unless_allowed(make_cfg):
    _, first = run_train(make_cfg("trainer.max_steps=1", "trainer.max_epochs=3"))
    folder = first["output_dir"]

    def resumed(*overrides: str):
        cfg = make_cfg("trainer.max_steps=2", "trainer.max_epochs=3", "ckpt_path=last", *overrides)
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder)
        return cfg

    before = files(folder)
    with pytest.raises(ConfigError, match=r"loss\.name='ipo' but the run that wrote it had loss\.name='sigmoid'.*"
                                          r"set resume_allow_changes=true"):
        run_train(resumed("loss=ipo"))
    assert files(folder) == before
    run_train(resumed("loss=ipo", "resume_allow_changes=true"))
    assert yaml.safe_load((folder / "config.before-resume-1.yaml").read_text())["loss"]["name"] == "sigmoid"
    assert yaml.safe_load((folder / "config.yaml").read_text())["loss"]["name"] == "ipo"
    assert (folder / "metrics.before-resume-1.csv").read_bytes() == before[folder / "metrics.csv"]


def test_resume_check_ignores_length_devices_and_paths():
    saved = {"seed": 0, "model": {"hidden_size": 64}, "loss": {"name": "sigmoid", "beta": 0.1},
             "trainer": {"max_steps": 2, "devices": 1, "precision": "32-true"}, "paths": {"output_dir": "/a"},
             "data": {"num_workers": 0, "batch_size": 4}, "callbacks": {"checkpoint": {"dirpath": "/a/checkpoints"}}}
    longer = {**saved, "trainer": {"max_steps": 9, "devices": 2, "precision": "32-true"},
              "paths": {"output_dir": "/b"}, "data": {"num_workers": 4, "batch_size": 4}, "callbacks": {}}
    assert changed_keys(saved, longer) == []
    wider = {**longer, "model": {"hidden_size": 128}, "data": {"num_workers": 0, "batch_size": 8}}
    assert changed_keys(saved, wider) == [("model.hidden_size", 64, 128), ("data.batch_size", 4, 8)]


def test_a_run_saved_before_a_field_existed_resumes_with_it_at_its_old_meaning():
    """``data.sampling.min_new_tokens`` arrived after runs were saved: absent means 0, so a config holding 0
    resumes and one holding another value is a change; ``keep_gradients`` changes memory only."""
    saved = {"seed": 0, "data": {"sampling": {"max_new_tokens": 8}}, "objective": {"module": {"layout": "packed"}}}
    now = {"seed": 0, "data": {"sampling": {"max_new_tokens": 8, "min_new_tokens": 0}},
           "objective": {"module": {"layout": "packed", "keep_gradients": False}}}
    assert changed_keys(saved, now) == []
    held = {**now, "data": {"sampling": {"max_new_tokens": 8, "min_new_tokens": 8}}}
    assert changed_keys(saved, held) == [("data.sampling.min_new_tokens", 0, 8)]


# --- multirun folders ---------------------------------------------------------------------------------------------

def test_a_multirun_given_paths_output_dir_makes_it_the_sweep_root(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "loss=sigmoid,ipo", f"paths.output_dir={sweep}", f"paths.root={tmp_path}"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.rglob("metrics.csv"))
    assert [job.parent for job in jobs] == [sweep, sweep]
    assert [job.name for job in jobs] == [  # as in other multiruns: hydra.sweep.subdir
        f"{n}_data.prompts.max_train=8,data.prompts.max_val=4,debug=fast,loss={loss},trainer.max_steps=1"
        for n, loss in enumerate(("sigmoid", "ipo"))]
    assert [only(job.glob("checkpoints/*.ckpt")).name for job in jobs] == ["last.ckpt", "last.ckpt"]
    assert [yaml.safe_load((job / "config.yaml").read_text())["paths"]["output_dir"] for job in jobs] == \
        [str(job) for job in jobs]
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert [Path(r["run_dir"]) for r in summary["records"]] == jobs and summary["completed"] == 2
    assert not list(tmp_path.glob("multirun"))  # the whole sweep is in paths.output_dir

    before = files(sweep)
    again = run_cli(*args, cwd=tmp_path)  # the same sweep again: refused before any job starts
    assert again.returncode == 2
    assert f"hydra.sweep.dir={sweep} already holds another sweep or run (multirun.yaml" in again.stderr
    assert files(sweep) == before


def _rank_params(job: Path) -> tuple[dict, dict]:
    return tuple(json.loads((job / f"params-rank{rank}.json").read_text()) for rank in (0, 1))


def test_a_ddp_multirun_runs_each_job_once_on_both_ranks(tmp_path):
    result = run_cli("-m", *TINY, *DDP, "loss=sigmoid,ipo", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only(tmp_path.glob("multirun/*/*"))  # rank 1 ran no sweep of its own
    jobs = sorted(p.parent for p in tmp_path.rglob("metrics.csv"))
    assert [job.parent for job in jobs] == [sweep, sweep]
    ranks = [_rank_params(job) for job in jobs]
    assert [rank0 == rank1 for rank0, rank1 in ranks] == [True, True]
    assert [rank0["loss"] for rank0, _ in ranks] == ["sigmoid", "ipo"]
    assert not (tmp_path / "runs").exists()  # nor a run folder of its own
    assert len(re.findall(r"^done: ", result.stdout, flags=re.M)) == 2  # one per job: rank 0's


def test_ddp_ranks_of_an_optuna_trial_train_the_same_parameters(tmp_path):
    import optuna

    # Job folders named by number only: this many overrides would make a name longer than a file name may be.
    result = run_cli("-m", "sweep=optuna", "optuna.study=ddp", "optuna.trials=1", *TINY, *DDP,
                     f"paths.root={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    job = only(tmp_path.rglob("metrics.csv")).parent
    rank0, rank1 = _rank_params(job)
    assert rank0 == rank1
    (trial,) = optuna.load_study(study_name="ddp", storage=f"sqlite:///{tmp_path}/sweeps/ddp/study.db").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert rank0["loss"] == trial.params["loss"]  # the trial's own draw, on both ranks
    assert [rank0[key] for key in ("loss.beta", "optimizer.lr")] == pytest.approx(
        [trial.params[key] for key in ("loss.beta", "optimizer.lr")], rel=1e-12)


# --- progress lines when stdout is a file -------------------------------------------------------------------------

def test_training_logs_progress_when_stdout_is_not_a_terminal(make_cfg, capsys, caplog):
    caplog.set_level("INFO", logger="alignlab.progress")
    run_train(make_cfg("trainer.max_steps=3", "callbacks.progress.every_n_steps=2"))
    lines = [r.getMessage() for r in caplog.records if r.name == "alignlab.progress"]
    steps = [re.fullmatch(PROGRESS_LINE, line) for line in lines]
    assert all(steps), lines
    assert [(int(m[1]), int(m[2])) for m in steps] == [(2, 3), (3, 3)]  # every 2 steps, and the last
    assert lines[-1].endswith("ETA 0:00:00")


def test_progress_follows_the_terminal_unless_forced(monkeypatch):
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert not progress_wanted("auto") and not ProgressLog().active
    assert progress_wanted(True) and ProgressLog(enabled=True).active
    monkeypatch.undo()
    assert progress_wanted("auto") and not progress_wanted(False)
    with pytest.raises(ConfigError, match="callbacks.progress.every_n_steps"):
        ProgressLog(every_n_steps=0)


def test_generation_batches_are_logged_with_rate_and_eta(caplog):
    caplog.set_level("INFO", logger="alignlab.progress")
    line = log_generation_progress("counterfactual pairs", done=32, total=80, new_tokens=400, elapsed=20.0,
                                   enabled=True)
    assert line == "generation counterfactual pairs: 32/80 prompts | 20 new tokens/s | elapsed 0:00:20 | ETA 0:00:30"
    assert caplog.messages == [line]
    assert log_generation_progress("forced off", done=1, total=5, new_tokens=50, elapsed=9.0, enabled=False) is None


def test_the_cli_prints_progress_lines_into_a_file(tmp_path):
    result = run_cli(*TINY, "trainer.max_steps=2", "callbacks.progress.every_n_steps=1", f"paths.root={tmp_path}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [(int(m[1]), int(m[2])) for m in re.finditer(PROGRESS_LINE, result.stdout)]
    assert steps == [(1, 2), (2, 2)]

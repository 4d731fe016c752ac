"""Sweeps end to end through the real CLI: failures recorded per job, Optuna resumed after a kill, submitit_local,
and ``alignlab-compare`` checked against the runs' own metrics.csv."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from alignlab.compare import load_local, load_wandb_offline, main, read_metrics_csv
from alignlab.train import run_train

TINY = ["debug=fast", "trainer.max_steps=1", "data.prompts.max_train=8", "data.prompts.max_val=4"]


def cli(*args: str) -> list[str]:
    code = "import sys; from alignlab.cli import train; sys.argv[0] = 'alignlab-train'; train()"
    return [sys.executable, "-c", code, *args]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), cwd=cwd, capture_output=True, text=True, timeout=600)


def only(paths) -> Path:
    (path,) = list(paths)
    return path


def test_a_failed_job_is_recorded_and_the_others_run(tmp_path):
    result = run("-m", *TINY, "loss.beta=-1,0.1", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0  # Hydra reports the failure at the end...
    assert "loss.beta must be positive, got -1" in result.stderr
    summary = json.loads(only(tmp_path.glob("multirun/*/*/sweep_summary.json")).read_text())
    assert (summary["jobs"], summary["completed"], summary["failed"]) == (2, 1, 1)
    failed, done = summary["records"]
    assert failed["status"] == "failed" and "loss.beta=-1" in failed["overrides"]
    assert failed["error"] == "ConfigError: loss.beta must be positive, got -1"
    assert "Traceback" in (Path(failed["run_dir"]) / "error.txt").read_text()
    # ...after the second job ran to the end.
    assert done["status"] == "completed" and "loss.beta=0.1" in done["overrides"]
    assert done["metrics"]["val/rewards/accuracies"] == done["objective_value"]
    info = json.loads((Path(done["run_dir"]) / "run_info.json").read_text())
    assert info["choices"]["loss"] == "sigmoid"
    assert info["environment"]["torch"] == torch.__version__ and info["environment"]["cpus_available"] >= 1


def sweep_params(name: str) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from alignlab.cli import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", [f"sweep={name}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


def test_named_sweeps_compose_their_grids():
    assert sweep_params("loss_beta") == {"loss": "sigmoid,ipo,hinge", "loss.beta": "0.1,0.5"}
    assert sweep_params("objectives") == {"objective": "dpo,oaif,counterfactual_dpo"}
    for name in ("dpo_family", "oaif_length", "counterfactual", "optuna"):
        assert sweep_params(name)


def test_unknown_sweep_value_is_named(tmp_path):
    result = run("-m", *TINY, "sweep=nope", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode != 0 and "sweep" in result.stderr and "nope" in result.stderr


def _study(storage: Path):
    import optuna

    return optuna.load_study(study_name="t", storage=f"sqlite:///{storage}")


def _complete_trials(storage: Path) -> int:
    """Finished trials, read straight from SQLite in read-only mode: opening the study through Optuna here would
    run its schema set-up concurrently with the sweep's own and can make the sweep fail on a locked database."""
    if not storage.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{storage}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # the tables are still being created, or the database is locked
        return 0


def test_optuna_search_resumes_after_a_kill(tmp_path):
    args = ["-m", "sweep=optuna", "optuna.study=t", "optuna.trials=3", *TINY, f"paths.root={tmp_path}"]
    log = tmp_path / "first_launch.log"
    with log.open("w") as out:
        first = subprocess.Popen(cli(*args), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.time() + 900  # a loaded machine can take minutes for the first trial
    # Killed once the study has recorded its first finished trial (the sweeper tells Optuna after the job's own
    # record is written, so waiting for that file alone races on a loaded machine).
    while not _complete_trials(tmp_path / "sweeps/t/study.db") and time.time() < deadline:
        assert first.poll() is None, f"the first launch ended before its first trial:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # interrupted after its first trial
    first.wait()
    import optuna

    before = _study(tmp_path / "sweeps/t/study.db").get_trials()
    done_before = [t for t in before if t.state == optuna.trial.TrialState.COMPLETE]
    assert 1 <= len(done_before) < 3
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    trials = _study(tmp_path / "sweeps/t/study.db").get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3  # the relaunch ran only the missing trials
    assert complete[0].params == done_before[0].params  # and kept the first launch's
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 3  # no replayed draws
    best = only(tmp_path.glob("sweeps/t/*/optimization_results.yaml")).read_text()
    assert "best_value" in best


def test_submitit_local_launches_two_jobs(tmp_path):
    result = run("-m", "hydra/launcher=local", *TINY, "loss=sigmoid,ipo", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = only(tmp_path.glob("multirun/*/*"))
    assert list(sweep.glob(".submitit/*/*_result.pkl"))  # the jobs ran as submitit jobs
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["completed"] == 2
    assert [o for r in summary["records"] for o in r["overrides"] if o.startswith("loss=")] == ["loss=sigmoid",
                                                                                                "loss=ipo"]


# --- alignlab-compare --------------------------------------------------------------------------------------------

@pytest.fixture
def two_runs(make_cfg, tmp_path):
    folders = []
    for loss in ("sigmoid", "ipo"):
        cfg = make_cfg(f"loss={loss}", "trainer.max_steps=3")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "runs" / loss)
        run_train(cfg)
        folders.append(Path(cfg.paths.output_dir))
    return folders


def test_compare_table_matches_metrics_csv(two_runs, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    (runs_dir / "killed_at_start").mkdir()
    (runs_dir / "killed_at_start" / "config.yaml").write_text("seed: 0\n")
    code = main([str(runs_dir), "--by", "loss", "--metrics", "train/loss,val/loss,val/nope", "--out",
                 str(tmp_path / "cmp")])
    out, err = capsys.readouterr()
    assert code == 0
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv").set_index("loss")
    for folder in two_runs:
        metrics = read_metrics_csv(folder / "metrics.csv")
        expected_final = metrics["val/loss"].dropna().iloc[-1]
        expected_best = metrics["train/loss"].dropna().min()
        loss = folder.name
        assert table.loc[loss, "val/loss final mean"] == pytest.approx(expected_final)
        assert table.loc[loss, "train/loss best mean"] == pytest.approx(expected_best)
        assert table.loc[loss, "n"] == 1
    assert "killed_at_start: nothing logged" in err and "'val/nope' was logged by no run" in err
    assert "| ipo | 1 | finished |" in out
    assert (tmp_path / "cmp" / "curve_train_loss.png").stat().st_size > 0
    assert (tmp_path / "cmp" / "bar_val_loss.png").stat().st_size > 0


def test_compare_groups_seeds_and_marks_unfinished_runs(two_runs, tmp_path):
    half = tmp_path / "runs" / "half"
    half.mkdir()
    (half / "config.yaml").write_text((two_runs[0] / "config.yaml").read_text())
    lines = (two_runs[0] / "metrics.csv").read_text().splitlines()
    (half / "metrics.csv").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])  # cut mid-line
    runs, problems = load_local([str(tmp_path / "runs")], tmp_path)
    assert {r.name: r.status for r in runs} == {"half": "unfinished", "ipo": "finished", "sigmoid": "finished"}
    assert main([str(tmp_path / "runs"), "--by", "loss", "--metrics", "val/loss", "--out", str(tmp_path / "c"),
                 "--no-plots"]) == 0
    table = pd.read_csv(tmp_path / "c" / "comparison.csv").set_index("loss")
    assert table.loc["sigmoid", "n"] == 2 and table.loc["sigmoid", "status"] == "unfinished"
    values = [read_metrics_csv(f / "metrics.csv")["val/loss"].dropna().iloc[-1] for f in (two_runs[0], half)]
    assert table.loc["sigmoid", "val/loss final mean"] == pytest.approx(sum(values) / 2)


def test_compare_reads_wandb_offline_runs(tmp_path):
    result = run("-m", *TINY, "logger=wandb", "loss=sigmoid,hinge", f"paths.root={tmp_path}", "tags=[smoke]",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = only(tmp_path.glob("multirun/*/*"))
    for folder in sorted(p for p in sweep.iterdir() if (p / "metrics.csv").is_file()):
        wandb_run = load_wandb_offline(only(folder.glob("wandb/offline-run-*")))
        assert wandb_run.params["wandb.group"] == "/".join(sweep.parts[-2:])  # one group per sweep
        assert "smoke" not in wandb_run.params  # tags that are not overrides are not parameters
        loss = wandb_run.param("loss")
        assert f"loss={loss}" in folder.name and wandb_run.param("loss.beta") == 0.1  # from the logged config
        local = read_metrics_csv(folder / "metrics.csv")
        assert wandb_run.history["val/loss"].dropna().iloc[-1] == pytest.approx(local["val/loss"].dropna().iloc[-1])

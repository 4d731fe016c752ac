"""No online run silently loses, mixes or fakes its results: an annotator that never answers usably stops the run in
one line, a run that trained on nothing fails, a resumed run samples what the uninterrupted one did, and under DDP a
rank with no pairs still takes part in the step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from alignlab.data.online import JudgeHealth
from alignlab.errors import ConfigError, JudgeFailure, TrainingFailure
from alignlab.judges.base import Verdicts
from alignlab.train import run_train

from .test_online import FewerEsJudge
from .test_train import column, read_metrics

ROOT = Path(__file__).resolve().parents[1]
OAIF = ["objective=oaif", "data.sampling.max_new_tokens=6", "data.unfinished=keep"]


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``alignlab-train`` as ``python -m alignlab.cli``, on this checkout's code (children inherit PYTHONPATH).

    Past ``timeout`` the whole process group is killed (DDP ranks included: a hung rank must not outlive the test)
    and the test fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen([sys.executable, "-m", "alignlab.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"alignlab-train ran past {timeout} s (hung?):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# --- an annotator that keeps failing stops the run ----------------------------------------------------------------

@pytest.fixture
def letterless_server():
    """An OpenAI-compatible server on 127.0.0.1 whose model never replies with a letter (as a small model asked to
    pick A or B often does): every reply is well-formed and unreadable as a verdict."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Both answers are\ngood."}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_an_annotator_that_never_answers_usably_stops_the_run_in_one_line(letterless_server, tmp_path):
    result = run_cli("debug=fast", *OAIF, "judge=openai", "judge.model=small-chat", f"judge.base_url={letterless_server}",
                     f"judge.cache_dir={tmp_path}/cache", "judge.max_retries=0", "data.judge_failure_window=8",
                     "validate_before_training=false", "trainer.max_steps=20", f"paths.root={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alignlab: error: judge OpenAIPairwiseJudge(model='small-chat', url="), last
    assert "of the last 8 pairs it was asked about (data.max_judge_failure_fraction=0.5" in last
    assert last.endswith("last failure: unreadable reply 'Both answers are\\ngood.'"), last
    assert not list(tmp_path.rglob("summary.json"))  # the run did not finish as if it had trained


def test_the_failure_cap_spares_occasional_failures_and_a_bad_first_batch():
    health = JudgeHealth(max_fraction=0.5, window=8)
    health.record(Verdicts([None] * 4, last_failure="unreadable reply 'hmm'"))
    assert not health.tripped()  # 4 failures of 8 allowed: a bad first batch is not enough
    health.record(Verdicts([1.0, 0.0, 1.0, 1.0]))
    for _ in range(10):  # one failure in four, for long: never
        health.record(Verdicts([1.0, None, 0.0, 1.0]))
        assert not health.tripped()
    health.record(Verdicts([None] * 3 + [1.0, None, None]))
    assert health.tripped() and health.failures == 5  # of the last 8: 0, 1, then N N N 1 N N
    assert "failed on 5 of the last 8 pairs" in str(health.error(FewerEsJudge()))
    restored = JudgeHealth(max_fraction=0.5, window=8)
    restored.load_state_dict(health.state_dict())
    assert restored.tripped() and restored.last_failure == "unreadable reply 'hmm'"
    never = JudgeHealth(max_fraction=1.0, window=2)
    never.record(Verdicts([None] * 5))
    assert not never.tripped()
    with pytest.raises(ConfigError, match="data.max_judge_failure_fraction=1.5"):
        JudgeHealth(max_fraction=1.5)


class AlwaysFailing:
    def __call__(self, prompts, pairs, metas=None):
        return Verdicts([None] * len(pairs))


class Buggy:
    def __call__(self, prompts, pairs, metas=None):
        return Verdicts([None] * len(pairs)) + 1  # a TypeError: a bug, not an annotator's fault


def test_a_failing_judge_stops_training_and_a_buggy_one_propagates(make_cfg, monkeypatch):
    import alignlab.judges.rule as rule

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: AlwaysFailing())
    cfg = make_cfg(*OAIF, "trainer.max_steps=10", "data.judge_failure_window=8")
    with pytest.raises(JudgeFailure, match=r"judge <tests\.test_online_faults\.AlwaysFailing object .* failed on \d "
                                           r"of the last 8 pairs .*; last failure: none reported"):
        run_train(cfg)
    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: Buggy())
    with open_dict(cfg):
        cfg.paths.output_dir += "-buggy"
    with pytest.raises(TypeError, match="unsupported operand"):
        run_train(cfg)


# --- a run that trained on nothing fails --------------------------------------------------------------------------

def test_a_run_whose_pairs_are_all_dropped_fails_naming_why(make_cfg, monkeypatch):
    import alignlab.judges.rule as rule

    class AllTies:
        def __call__(self, prompts, pairs, metas=None):
            return Verdicts([0.5] * len(pairs))

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: AllTies())
    cfg = make_cfg(*OAIF, "trainer.max_steps=2", "validate_before_training=false")
    with pytest.raises(TrainingFailure, match=r"0 of 2 training steps had pairs to train on "
                                              r"\(objective.module.min_updates=1\); .*pairs=8, .*ties=[1-8]\b"):
        run_train(cfg)


# --- a resumed online run samples what the uninterrupted one did --------------------------------------------------

def test_an_online_run_resumes_with_the_same_samples_and_losses(make_cfg, tmp_path, monkeypatch):
    import alignlab.judges.rule as rule

    monkeypatch.setattr(rule, "RuleJudge", lambda **kw: FewerEsJudge())
    every3 = [*OAIF, "trainer.max_steps=6", "trainer.max_epochs=2", "data.prompts.max_train=16",
              "callbacks.checkpoint.every_n_train_steps=3", "callbacks.checkpoint.save_top_k=-1",
              "optimizer.lr=1e-3"]
    _, full = run_train(make_cfg(*every3))
    straight = read_metrics(full["output_dir"])
    step3 = full["output_dir"] / "checkpoints" / "step000003.ckpt"
    saved = torch.load(step3, weights_only=False)["OnlinePairsDataModule"]["judge_health"]
    assert len(saved["recent"]) >= 1  # the judge's recent record travels with the checkpoint too

    resumed_cfg = make_cfg(*every3, f"ckpt_path={step3}")
    with open_dict(resumed_cfg):
        resumed_cfg.paths.output_dir = str(tmp_path / "resumed")
    _, resumed = run_train(resumed_cfg)
    after = read_metrics(resumed["output_dir"])
    for key in ("train/online/mean_length", "train/online/kept", "train/loss"):  # the samples, then what they train
        assert len(column(straight, key)) == 6 and len(column(after, key)) == 3, key
        assert column(after, key) == pytest.approx(column(straight, key)[3:], abs=1e-6), key


# --- under DDP, a rank with no pairs still takes part ---------------------------------------------------------------

def test_ddp_ranks_step_together_when_one_drops_every_pair(tmp_path):
    """Two CPU processes on gloo; rank 1's judge ties every pair. Without the zero loss rank 0 would wait for rank 1
    in the gradient all-reduce forever (here: the timeout)."""
    result = run_cli("debug=fast", *OAIF, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "~judge.instruction", "~judge.answer_key", "judge._target_=tests.ddp_online.TiesOnRankOne",
                     "+callbacks.weights._target_=tests.ddp_online.RecordRankWeights", "optimizer.lr=1e-2",
                     f"paths.root={tmp_path}", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = next(tmp_path.rglob("weights-rank0.json")).parent
    rank0, rank1 = (json.loads((run / f"weights-rank{r}.json").read_text()) for r in (0, 1))
    assert rank1["updates"] == 0 and rank0["updates"] >= 1  # rank 1 had no pairs at all
    assert rank0["step"] == rank1["step"] == 2
    assert rank0["final"] == rank1["final"] != rank0["initial"]  # one update, the same on both replicas
    config = (run / "config.yaml").read_text()
    assert "precision: 32-true" in config  # trainer=ddp on CPU does not train in bf16

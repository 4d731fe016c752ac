"""Callbacks shared by every objective."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

from alignlab.data.collate import PreferenceBatch
from alignlab.data.prompt_set import PromptExample, PromptSet
from alignlab.errors import ConfigError
from alignlab.loggers import log_records_table
from alignlab.records import Recorder
from alignlab.sampling import Sampling


class ThroughputMonitor(pl.Callback):
    """Logs ``train/tokens_per_sec``: training tokens (prompt counted once per response, no padding) per second.

    The count is the one TRL's DPOTrainer reports, so the figure compares with it directly.
    """

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._start
        if elapsed > 0 and isinstance(batch, PreferenceBatch):
            pl_module.log("train/tokens_per_sec", batch.num_tokens / elapsed, on_step=True, on_epoch=False,
                          batch_size=len(batch), prog_bar=True)


class WinRateMonitor(pl.Callback):
    """Every ``every_n_steps`` (and at the end), answers from the policy and the reference on held-out prompts,
    compared by ``evaluator`` (a judge, which may differ from the training annotator) and ``reward``.

    Logs ``val/samples/*``: ``win_rate`` (ties count half) and ``wins``/``ties``/``losses`` (evaluator),
    ``reward`` and ``reward_reference``, ``mean_length``, ``kl_to_reference``; writes every answer to
    ``<run>/records/monitor.jsonl``. Needs a reference that can sample (OAIF keeps one; offline DPO with
    precomputed reference log-probs frees it, and then this callback says so once and does nothing).

    Args:
        evaluator, reward: see :func:`alignlab.policy_vs_reference.sample_and_rate`.
        every_n_steps: 0 measures only at the end.
        num_prompts, n_samples: the first ``num_prompts`` held-out prompts, ``n_samples`` answers each.
        sampling: a :class:`Sampling` (``callbacks.win_rate.sampling``).
        prompts: a :class:`PromptSet` whose validation prompts are measured instead of the datamodule's: arms that
            train on different data (online prompts, offline pairs) are then scored on the same prompt ids.
        reference_cache: where the reference's answers are kept once sampled (``null``: the alignlab cache;
            ``false``: sample them at every measurement).
    """

    def __init__(self, sampling: Sampling, evaluator=None, reward=None, every_n_steps: int = 50,
                 num_prompts: int = 16, n_samples: int = 1, prompts: PromptSet | None = None,
                 reference_cache: str | bool | None = None) -> None:
        self.evaluator, self.reward, self.every_n_steps = evaluator, reward, every_n_steps
        self.sampling, self.num_prompts, self.n_samples = sampling, num_prompts, n_samples
        self.prompts = prompts
        from alignlab.policy_vs_reference import reference_answer_cache

        self.cache = None if reference_cache is False else reference_answer_cache(reference_cache)
        self._examples: list[PromptExample] | None = None
        self._last_step, self._warned = -1, False

    def examples(self, datamodule) -> list[PromptExample]:
        """The measured prompts, fixed for the whole run (read once)."""
        if self._examples is None:
            from alignlab.policy_vs_reference import held_out_prompts

            self._examples = held_out_prompts(datamodule, self.prompts)[: self.num_prompts]
        return self._examples

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.measure(trainer, pl_module)

    def measure(self, trainer, pl_module) -> dict | None:
        if trainer.global_step == self._last_step:
            return None
        examples = self.examples(trainer.datamodule)
        if not pl_module.reference.can_sample or not examples:
            if not self._warned:
                logging.getLogger(__name__).warning("WinRateMonitor: no reference model in memory or no held-out "
                                                    "prompts; nothing measured")
                self._warned = True
            return None
        from alignlab.policy_vs_reference import sample_and_rate

        self._last_step = trainer.global_step
        recorder = Recorder(trainer.default_root_dir if trainer.is_global_zero else None,
                            getattr(trainer.datamodule, "seed", None), sampling_seed=self.sampling.seed)
        try:
            result = sample_and_rate(pl_module.policy, pl_module.reference, trainer.datamodule.tokenizer, examples,
                                     self.sampling, self.reward, self.evaluator, self.n_samples, recorder,
                                     "monitor", trainer.global_step, self.cache)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a monitor's fault (e.g. its evaluator) must not end training
            logging.getLogger(__name__).warning("WinRateMonitor: nothing measured at step %d (%s: %s)",
                                                trainer.global_step, type(e).__name__, e)
            return None
        logged = {"mean_length": result["policy/mean_length"], "kl_to_reference": result["policy/kl_to_reference"]}
        for key, name in (("judge/win_rate", "win_rate"), ("judge/wins", "wins"), ("judge/ties", "ties"),
                          ("judge/losses", "losses"), ("policy/reward", "reward"),
                          ("reference/reward", "reward_reference")):
            if key in result:
                logged[name] = result[key]
        for logger in trainer.loggers:
            logger.log_metrics({f"val/samples/{k}": float(v) for k, v in logged.items()}, step=trainer.global_step)
        log_records_table(trainer.loggers, "val/samples/records", recorder.rows.get("monitor", []),
                          trainer.global_step)
        return result

"""Callbacks shared by every objective."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

from alignlab.errors import ConfigError


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
        if elapsed > 0 and hasattr(batch, "num_tokens"):
            pl_module.log("train/tokens_per_sec", batch.num_tokens / elapsed, on_step=True, on_epoch=False,
                          batch_size=len(batch), prog_bar=True)


class WinRateMonitor(pl.Callback):
    """Every ``every_n_steps`` (and at the end), answers from the policy and the reference on held-out prompts,
    compared by ``evaluator`` (a judge, which may differ from the training annotator) and ``reward``.

    Logs ``val/samples/*``: ``win_rate`` (ties count half) and ``wins``/``ties``/``losses`` (evaluator),
    ``reward`` and ``reward_reference``, ``mean_length``, ``kl_to_reference``. Needs a reference model in memory
    (OAIF keeps one; offline DPO with precomputed reference log-probs frees it, and then this callback says so once
    and does nothing).
    """

    def __init__(self, evaluator=None, reward=None, every_n_steps: int = 50, num_prompts: int = 16,
                 max_new_tokens: int = 64, temperature: float = 0.7, top_p: float = 1.0, batch_size: int = 16,
                 seed: int = 0) -> None:
        from types import SimpleNamespace

        self.evaluator, self.reward, self.every_n_steps = evaluator, reward, every_n_steps
        self.generation = SimpleNamespace(num_prompts=num_prompts, max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                                          get=lambda key, default=None: seed if key == "seed" else default)
        self._last_step, self._warned = -1, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.measure(trainer, pl_module)

    def measure(self, trainer, pl_module) -> dict | None:
        if trainer.global_step == self._last_step:
            return None
        reference = getattr(pl_module, "_reference", None)
        datamodule = trainer.datamodule
        examples = getattr(datamodule, "val_pairs", None) or getattr(datamodule, "val_prompts", None)
        if reference is None or not examples:
            if not self._warned:
                logging.getLogger(__name__).warning("WinRateMonitor: no reference model in memory or no held-out "
                                                    "prompts; nothing measured")
                self._warned = True
            return None
        from alignlab.policy_vs_reference import sample_and_rate

        self._last_step = trainer.global_step
        try:
            result = sample_and_rate(pl_module.policy, reference, datamodule.tokenizer, examples, self.generation,
                                     self.reward, self.evaluator)
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
        return result

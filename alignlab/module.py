"""PreferenceModule: the one LightningModule behind every objective.

Whatever produced the pairs (a fixed dataset, the policy's own samples and a judge, counterfactual prompting), a
training step is the same: sequence log-probs of chosen and rejected under the policy (one forward for both,
:func:`alignlab.logprobs.pair_logps`), the same under the reference, a loss from :mod:`alignlab.losses`, and
the same metrics, named as TRL names them so runs compare side by side.

The reference is a public :class:`alignlab.reference.Reference` (``module.reference``): a frozen copy, the policy
with its LoRA adapter disabled, or reference log-probs computed once before training (fixed pairs only,
``precompute_reference=true``; the copy is then released).

A batch whose pairs were all dropped (online data) trains nothing: on one device the step is skipped; under
several devices the rank still takes part in the gradient all-reduce with a zero loss, or the others would wait
for it forever. A run that ends with fewer than ``min_updates`` steps that had pairs to train on fails
(:class:`alignlab.errors.TrainingFailure`) rather than exit as if it had trained.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from alignlab.data.collate import PreferenceBatch
from alignlab.data.online import PER_BATCH_MEANS
from alignlab.errors import ConfigError, TrainingFailure
from alignlab.logprobs import LAYOUTS, PairLogps, pair_logps, unwrap
from alignlab.losses import PreferenceLoss
from alignlab.reference import Reference

log = logging.getLogger(__name__)
# What preference_step reports for a batch; a rank with no pairs reports them with weight 0 (see validation_step).
PAIR_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected")


def _pair(logps: PairLogps | None) -> tuple[Tensor | None, Tensor | None]:
    return (logps.chosen, logps.rejected) if logps is not None else (None, None)


class PreferenceModule(pl.LightningModule):
    """Trains ``policy`` on preference pairs against a frozen reference.

    Args:
        policy: a causal LM (optionally a PEFT model); the only trained module.
        loss: a :class:`PreferenceLoss`.
        optimizer: ``params -> Optimizer`` (a ``_partial_`` from config).
        scheduler: ``(optimizer, total_steps) -> LRScheduler`` or ``None``.
        reference: the :class:`Reference` (a frozen copy or the disabled adapter); ``None`` for a reference-free
            loss.
        precompute_reference: compute reference log-probs for every pair once at fit start (the datamodule must
            serve fixed pairs: ``pair_loader("all")``), then drop the reference copy.
        layout: ``packed`` | ``shared_prompt`` | ``concatenated``, see :mod:`alignlab.logprobs`; all give the
            same log-probs, the first two compute each prompt once.
        disable_dropout: dropout off in the policy, as TRL does; the log-ratios are then deterministic.
        min_updates: a fit that runs steps but has fewer than this many with pairs to train on (summed over
            devices) raises :class:`TrainingFailure`, naming what dropped the pairs; 0 allows any.
        keep_gradients: keep the gradient buffers allocated between updates (zeroed in place: no re-allocation on
            the CPU heap every step); false drops them right after each update, for objectives that sample
            between updates (online), whose sampler then needs memory that the dead gradients would hold.
    """

    def __init__(self, policy: nn.Module, loss: PreferenceLoss, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, reference: Reference | None = None,
                 precompute_reference: bool = False, layout: str = "packed", disable_dropout: bool = True,
                 min_updates: int = 1, keep_gradients: bool = True) -> None:
        super().__init__()
        self.policy = policy.train()  # from_pretrained returns eval mode; Lightning keeps submodules' modes
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # A plain object, not a submodule: the reference never enters state_dict or checkpoints.
        self.reference = reference if reference is not None else Reference()
        self.precompute_reference = precompute_reference and loss.needs_reference
        if layout not in LAYOUTS:
            raise ConfigError(f"objective.module.layout={layout!r} is not one of {tuple(LAYOUTS)}")
        if layout == "shared_prompt" and getattr(unwrap(policy), "is_activation_checkpointing", False):
            layout = "packed"  # checkpointing turns the KV cache off in training
        self.layout = layout
        self.last_validated_step = -1
        self.min_updates = min_updates
        self.keep_gradients = keep_gradients
        self.updates, self.steps_at_start = 0, 0  # this fit's steps that had pairs; global_step when it began
        self.pair_counts: dict[str, float] = {}  # this fit's summed training stats (online: pairs, drops by cause)
        if loss.needs_reference and reference is None:
            raise ValueError(f"{loss!r} needs a reference model, and none was given")
        if disable_dropout:
            for module in policy.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0

    # ----- log-probs -------------------------------------------------------------------------------------------
    def policy_logps(self, batch: PreferenceBatch) -> PairLogps:
        return pair_logps(self.policy, batch, self.layout)

    def reference_pair_logps(self, batch: PreferenceBatch) -> PairLogps | None:
        return self.reference.pair_logps(batch, self.layout) if self.loss.needs_reference else None

    # ----- the step every objective shares ----------------------------------------------------------------------
    def preference_step(self, batch: PreferenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
        policy = self.policy_logps(batch)
        reference = self.reference_pair_logps(batch)
        summed = (*_pair(policy), *_pair(reference))
        if self.loss.average_logps:
            averaged_reference = reference.averaged() if reference is not None else None
            losses = self.loss(*_pair(policy.averaged()), *_pair(averaged_reference))
        else:
            losses = self.loss(*summed)
        # Rewards and logps are reported on summed log-probs whatever the loss uses, as TRL reports them.
        chosen_rewards, rejected_rewards = self.loss.rewards(*summed)
        loss = losses.mean()
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": policy.chosen.detach().mean(),
            "logps/rejected": policy.rejected.detach().mean(),
        }
        return loss, metrics

    def _log_stats(self, batch: PreferenceBatch, split: str) -> None:
        if batch.stats:
            on_step = split == "train"
            if on_step:
                for key, value in batch.stats.items():
                    self.pair_counts[key] = self.pair_counts.get(key, 0.0) + float(value)
            prompts = int(batch.stats.get("pairs", len(batch)))  # weight by prompts, not by pairs kept
            self.log_dict({f"{split}/online/{k}": float(v) for k, v in batch.stats.items()}, on_step=on_step,
                          on_epoch=not on_step, batch_size=max(1, prompts))

    def training_step(self, batch: PreferenceBatch, batch_idx: int) -> Tensor | None:
        self._log_stats(batch, "train")
        if len(batch) == 0:
            # Every pair of this batch was dropped (counted in the stats).
            if self.trainer.world_size > 1:
                return self.zero_loss()
            # Gradients set to None make the optimizer leave every parameter and its moments alone; the LR
            # schedule still advances one step. Under gradient accumulation the window's other batches may have
            # gradients for the coming step: they stay.
            if self.trainer.accumulate_grad_batches == 1:
                self.policy.zero_grad(set_to_none=True)
            return None
        self.updates += 1
        loss, metrics = self.preference_step(batch)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, on_step=True, on_epoch=False,
                      batch_size=len(batch))
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=len(batch))  # progress bar only
        return loss

    def zero_loss(self) -> Tensor:
        """A loss of 0 that reaches every trainable parameter: a rank with no pairs still joins DDP's gradient
        all-reduce (its zero gradients make the averaged update smaller by its share), and every rank then takes
        the same optimizer step, so the replicas stay equal."""
        return sum(p.sum() * 0.0 for p in self.policy.parameters() if p.requires_grad)

    def validation_step(self, batch: PreferenceBatch, batch_idx: int) -> None:
        self._log_stats(batch, "val")
        if len(batch) == 0:
            if self.trainer.world_size > 1:
                # The metrics are synced across ranks at epoch end: every rank must log the same ones, here with
                # weight 0 so that they do not move the mean.
                zero = torch.zeros((), device=self.device)
                self.log_dict({f"val/{k}": zero for k in PAIR_METRICS}, on_step=False, on_epoch=True, batch_size=0,
                              sync_dist=True)
            return
        _, metrics = self.preference_step(batch)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, on_step=False, on_epoch=True,
                      batch_size=len(batch), sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self.policy.train()

    def on_train_start(self) -> None:
        self.updates, self.steps_at_start, self.pair_counts = 0, self.global_step, {}

    def on_train_end(self) -> None:
        """Fail a fit that ran steps but (nearly) never had pairs to train on; every rank decides alike."""
        steps = self.global_step - self.steps_at_start
        updates = int(self.trainer.strategy.reduce(torch.tensor(float(self.updates), device=self.device),
                                                   reduce_op="sum"))
        if steps > 0 and updates < self.min_updates:
            counts = ", ".join(f"{k}={v:g}" for k, v in self.pair_counts.items() if k not in PER_BATCH_MEANS)
            raise TrainingFailure(f"{updates} of {steps} training steps had pairs to train on "
                                  f"(objective.module.min_updates={self.min_updates}); this device's pairs over the "
                                  f"run: {counts or 'none counted'}")

    def on_validation_epoch_end(self) -> None:
        self.last_validated_step = self.global_step

    # ----- reference handling around fit ------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.reference.to(self.device)
        datamodule = self.trainer.datamodule
        data_key = datamodule.fingerprint
        if self.reference.table is not None and self.reference.table_key != data_key:
            log.warning("the checkpoint's reference log-probs belong to other pairs than this data's: recomputing")
            self.reference.forget_table()
        if self.precompute_reference and self.reference.table is None:
            loader = datamodule.pair_loader("all")
            if loader is None:
                raise ConfigError("objective.module.precompute_reference=true needs fixed pairs (offline data)")
            if not self.reference.can_sample:
                raise ConfigError("no reference model to precompute log-probs with (the checkpoint's table is stale)")
            log.info("precomputing reference log-probs for %d pairs", datamodule.num_examples)
            # Under the training precision (e.g. bf16 autocast), so that h = 0 at step 0 as with a live reference.
            with self.evaluating(), self.trainer.precision_plugin.forward_context():
                self.reference.precompute(loader, datamodule.num_examples, data_key,
                                          lambda b: self.transfer_batch_to_device(b, self.device, 0), self.layout)
        self.reference.release_copy()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference.table is not None:
            checkpoint["reference_logps"] = self.reference.table
            checkpoint["reference_logps_key"] = self.reference.table_key

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.reference.table = checkpoint.get("reference_logps")
        self.reference.table_key = checkpoint.get("reference_logps_key")

    # ----- optimisation -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the gradient norm here rather than through Lightning, which refuses both a fused optimizer under
        mixed precision and norm clipping under FSDP. Under FSDP the sharded module computes the global norm."""
        if not gradient_clip_val or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16: clip the true gradients (bf16 has no loss scaler)
            scaler.unscale_(optimizer)
        wrapped = self.trainer.strategy.model
        if hasattr(wrapped, "clip_grad_norm_"):
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           gradient_clip_val)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not self.keep_gradients:  # dead until the next backward: the next step's sampler gets their memory
            optimizer.zero_grad(set_to_none=True)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer) -> None:
        # By default gradients stay allocated between steps: re-allocating the policy's size every step fragments
        # the CPU heap. An objective that samples between updates (online) drops them after each update instead
        # (keep_gradients=false), so that the sampler's working memory (a packed copy of the weights, the KV
        # cache) takes their place rather than adding to them.
        optimizer.zero_grad(set_to_none=not self.keep_gradients)

    @contextlib.contextmanager
    def evaluating(self):
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

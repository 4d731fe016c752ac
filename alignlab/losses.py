"""The DPO family of preference losses, one pure function each, and the registry that names them.

Every loss takes the summed (or, with ``average_logps``, per-token averaged) log-probabilities of the chosen and
rejected responses under the policy and the reference, each a ``Tensor[B]``, plus its own hyper-parameters, and
returns ``losses[B]``. Implicit rewards are the same for all of them, ``beta * (logpi - logpi_ref)``, so
:meth:`PreferenceLoss.rewards` computes them once for every loss. A loss never sees tokens, models or configs.

Notation: ``pc, pr`` are the policy's log-probs of chosen and rejected, ``rc, rr`` the reference's, and
``h = (pc - rc) - (pr - rr)`` the difference of log-ratios.

Check values used in the tests: pc=-8, pr=-10, rc=-11, rr=-9 give h=4; DPO beta=0.1 -> 0.5130;
IPO beta=1 -> (4 - 0.5)^2 = 12.25; hinge beta=0.002 -> 1 - 0.008 = 0.992.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from alignlab.errors import ConfigError

LossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class LossSpec:
    fn: LossFn
    needs_reference: bool
    paper: str


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, paper: str, needs_reference: bool = True) -> Callable[[LossFn], LossFn]:
    """Register ``fn`` under ``name``; ``loss.name=<name>`` selects it from config."""

    def wrap(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        LOSSES[name] = LossSpec(fn=fn, needs_reference=needs_reference, paper=paper)
        return fn

    return wrap


def _h(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    return (pc - rc) - (pr - rr)


@register_loss("sigmoid", paper="https://arxiv.org/abs/2305.18290")
def sigmoid_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """DPO: the Bradley-Terry negative log-likelihood of the implicit reward margin, ``-log sigmoid(beta*h)``."""
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr))


@register_loss("conservative", paper="https://ericmitchell.ai/cdpo.pdf")
def conservative_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float, label_smoothing: float) -> Tensor:
    """Conservative DPO: labels are flipped with probability ``label_smoothing``, so the target is not 1.

    ``-(1-eps) log sigmoid(beta*h) - eps log sigmoid(-beta*h)``; its minimum is at a finite margin, so it stops
    pushing once the pair is separated by ``log((1-eps)/eps) / beta``.
    """
    logits = beta * _h(pc, pr, rc, rr)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@register_loss("robust", paper="https://arxiv.org/abs/2403.00409")
def robust_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float, label_smoothing: float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024): the unbiased estimate of the clean loss under label-flip rate eps.

    ``[(1-eps)(-log sigmoid(beta*h)) - eps(-log sigmoid(-beta*h))] / (1 - 2 eps)``; needs ``0 <= eps < 0.5``.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust loss needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    logits = beta * _h(pc, pr, rc, rr)
    clean = -(1 - label_smoothing) * F.logsigmoid(logits)
    flipped = -label_smoothing * F.logsigmoid(-logits)
    return (clean - flipped) / (1 - 2 * label_smoothing)


@register_loss("ipo", paper="https://arxiv.org/abs/2310.12036")
def ipo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """IPO: regress the log-ratio difference onto ``1/(2*beta)`` instead of pushing it to infinity.

    With summed log-probs (the default here) ``h`` grows with response length; TRL averages per token for IPO:
    set ``loss.average_logps=true`` for that convention.
    """
    return (_h(pc, pr, rc, rr) - 1 / (2 * beta)) ** 2


@register_loss("hinge", paper="https://arxiv.org/abs/2305.10425")
def hinge_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """SLiC-HF's calibration loss as used by OAIF: ``max(0, 1 - beta*h)``, zero once the margin reaches 1/beta."""
    return torch.relu(1 - beta * _h(pc, pr, rc, rr))


@register_loss("exo_pair", paper="https://arxiv.org/abs/2402.00856")
def exo_pair_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float, label_smoothing: float) -> Tensor:
    """EXO (pairwise): reverse KL from the policy's pair distribution to the target ``[1-eps, eps]``; needs eps > 0."""
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1, got {label_smoothing}")
    logits = beta * _h(pc, pr, rc, rr)
    q_win, q_lose = torch.sigmoid(logits), torch.sigmoid(-logits)
    return (q_win * (F.logsigmoid(logits) - math.log1p(-label_smoothing))
            + q_lose * (F.logsigmoid(-logits) - math.log(label_smoothing)))


@register_loss("nca_pair", paper="https://arxiv.org/abs/2402.05369")
def nca_pair_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """NCA: optimises absolute rewards, so the chosen likelihood is pushed up, not only the margin."""
    reward_c, reward_r = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(reward_c) - 0.5 * F.logsigmoid(-reward_c) - 0.5 * F.logsigmoid(-reward_r)


@register_loss("bco_pair", paper="https://arxiv.org/abs/2404.04656")
def bco_pair_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """Binary classifier optimisation on pairs: chosen classified as good, rejected as bad (no running shift)."""
    return -F.logsigmoid(beta * (pc - rc)) - F.logsigmoid(-beta * (pr - rr))


@register_loss("sppo_hard", paper="https://arxiv.org/abs/2405.00675")
def sppo_hard_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """SPPO with hard win probabilities: chosen log-ratio regressed to +1/(2beta), rejected to -1/(2beta)."""
    return (pc - rc - 0.5 / beta) ** 2 + (pr - rr + 0.5 / beta) ** 2


@register_loss("apo_zero", paper="https://arxiv.org/abs/2408.06266")
def apo_zero_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """APO-zero: raise the chosen likelihood and lower the rejected one (chosen better than the model's own)."""
    return (1 - torch.sigmoid(beta * (pc - rc))) + torch.sigmoid(beta * (pr - rr))


@register_loss("apo_down", paper="https://arxiv.org/abs/2408.06266")
def apo_down_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float) -> Tensor:
    """APO-down: lower both likelihoods, the rejected more (chosen worse than the model's own answers)."""
    return torch.sigmoid(beta * (pc - rc)) + (1 - torch.sigmoid(beta * _h(pc, pr, rc, rr)))


@register_loss("simpo", paper="https://arxiv.org/abs/2405.14734", needs_reference=False)
def simpo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, beta: float, gamma: float) -> Tensor:
    """SimPO: reference-free, with a target margin ``gamma``; meant for ``average_logps=true`` (its paper's form).

    The reference terms are zero here (the loss declares it needs no reference).
    """
    return -F.logsigmoid(beta * _h(pc, pr, rc, rr) - gamma)


class PreferenceLoss:
    """A registered loss bound to its hyper-parameters; what ``hydra.utils.instantiate(cfg.loss)`` returns.

    Args:
        name: a key of :data:`LOSSES`.
        beta: the KL-regularisation strength (scales implicit rewards for every loss).
        reference_free: treat the reference log-probs as zero (implicit reference pi_ref = 1).
        average_logps: use per-token mean log-probs instead of sums (TRL's IPO convention; SimPO's form).
        **hparams: the loss function's own keyword arguments (``label_smoothing``, ``gamma``); an unknown key
            is an error naming it.
    """

    def __init__(self, name: str, beta: float, reference_free: bool = False, average_logps: bool = False,
                 **hparams: float) -> None:
        if name not in LOSSES:
            raise ConfigError(f"loss.name={name!r} is not a registered loss; choose one of {sorted(LOSSES)}")
        if beta <= 0:
            raise ConfigError(f"loss.beta must be positive, got {beta}")
        self.name, self.spec = name, LOSSES[name]
        params = inspect.signature(self.spec.fn).parameters
        accepted = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - {"beta"}
        required = {p for p in accepted if params[p].default is inspect.Parameter.empty}
        unknown, missing = set(hparams) - accepted, required - set(hparams)
        if unknown:
            raise ConfigError(f"loss {name!r} takes no parameter {sorted(unknown)} (it takes beta, {sorted(accepted)})")
        if missing:
            raise ConfigError(f"loss {name!r} needs loss.{sorted(missing)[0]} to be set")
        self.beta = float(beta)
        self.hparams = {k: float(v) for k, v in hparams.items()}
        self.reference_free = reference_free or not self.spec.needs_reference
        self.average_logps = average_logps

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    def __call__(self, policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor | None,
                 ref_rejected: Tensor | None) -> Tensor:
        """Per-pair losses, ``Tensor[B]``.

        Args:
            policy_chosen, policy_rejected: ``Tensor[B]`` log-probs of the responses under the policy.
            ref_chosen, ref_rejected: ``Tensor[B]`` under the reference, or ``None`` when reference-free.
        """
        if self.reference_free or ref_chosen is None:
            ref_chosen = torch.zeros_like(policy_chosen)
            ref_rejected = torch.zeros_like(policy_rejected)
        return self.spec.fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=self.beta, **self.hparams)

    def rewards(self, policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor | None,
                ref_rejected: Tensor | None) -> tuple[Tensor, Tensor]:
        """Implicit rewards ``beta * (logpi - logpi_ref)``, detached, each ``Tensor[B]``."""
        if self.reference_free or ref_chosen is None:
            return self.beta * policy_chosen.detach(), self.beta * policy_rejected.detach()
        return self.beta * (policy_chosen - ref_chosen).detach(), self.beta * (policy_rejected - ref_rejected).detach()

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.hparams.items())
        return f"PreferenceLoss({self.name}, beta={self.beta}{extra}, reference_free={self.reference_free})"

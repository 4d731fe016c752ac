"""Loss values derived by hand (METHODS.md's check values and others), and the registry's contract."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses import LOSSES, PreferenceLoss

# policy chosen/rejected = -8/-10, reference = -11/-9: log-ratios +3 and -1, so h = 4.
PC, PR, RC, RR = (torch.tensor([v]) for v in (-8.0, -10.0, -11.0, -9.0))


def value(name, beta, **hp):
    loss = PreferenceLoss(name, beta, **hp)
    chosen_rewards, rejected_rewards = loss.rewards(PC, PR, RC, RR)
    return loss(PC, PR, RC, RR).item(), chosen_rewards.item(), rejected_rewards.item()


def test_sigmoid_check_value():
    # -log sigmoid(0.1 * 4) = log(1 + e^-0.4) = 0.51302
    assert value("sigmoid", 0.1)[0] == pytest.approx(0.5130153, abs=1e-6)


def test_ipo_check_value():
    # (4 - 1/(2*1))^2 = 3.5^2
    assert value("ipo", 1.0)[0] == pytest.approx(12.25)


def test_hinge_check_value():
    # max(0, 1 - 0.002 * 4) = 0.992; and zero once beta*h >= 1
    assert value("hinge", 0.002)[0] == pytest.approx(0.992)
    assert value("hinge", 0.5)[0] == 0.0


def test_rewards_are_beta_times_log_ratios():
    _, chosen, rejected = value("sigmoid", 0.1)
    assert chosen == pytest.approx(0.3) and rejected == pytest.approx(-0.1)


def test_conservative_interpolates_both_directions():
    # eps=0.25: 0.75 * log(1+e^-0.4) + 0.25 * log(1+e^0.4)
    expected = 0.75 * math.log1p(math.exp(-0.4)) + 0.25 * math.log1p(math.exp(0.4))
    assert value("conservative", 0.1, label_smoothing=0.25)[0] == pytest.approx(expected, abs=1e-6)


def test_robust_is_unbiased_correction():
    # [(0.9) log(1+e^-0.4) - 0.1 log(1+e^0.4)] / 0.8
    expected = (0.9 * math.log1p(math.exp(-0.4)) - 0.1 * math.log1p(math.exp(0.4))) / 0.8
    assert value("robust", 0.1, label_smoothing=0.1)[0] == pytest.approx(expected, abs=1e-6)
    assert value("robust", 0.1, label_smoothing=0.0)[0] == pytest.approx(value("sigmoid", 0.1)[0])


def test_sppo_hard_and_nca_by_hand():
    # sppo: (3 - 0.5/0.5)^2 + (-1 + 0.5/0.5)^2 = 4 + 0
    assert value("sppo_hard", 0.5)[0] == pytest.approx(4.0)
    # nca: r+ = 0.3, r- = -0.1
    s = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    assert value("nca_pair", 0.1)[0] == pytest.approx(-s(0.3) - 0.5 * s(-0.3) - 0.5 * s(0.1), abs=1e-6)


def test_simpo_by_hand():
    # reference-free: h = -8 - (-10) = 2; -log sigmoid(2 * 2 - 0.5) = log(1 + e^-3.5)
    assert value("simpo", 2.0, gamma=0.5)[0] == pytest.approx(math.log1p(math.exp(-3.5)), abs=1e-6)


def test_reference_free_ignores_reference():
    loss = PreferenceLoss("sigmoid", 0.1, reference_free=True)
    # h = -8 - (-10) = 2 without the reference
    assert loss(PC, PR, RC, RR).item() == pytest.approx(math.log1p(math.exp(-0.2)), abs=1e-6)
    assert not loss.needs_reference
    assert not PreferenceLoss("simpo", 2.0, gamma=0.5).needs_reference


def test_every_loss_prefers_a_larger_margin():
    """More likelihood for the chosen answer never costs more, below IPO's target margin."""
    small, large = torch.tensor([-10.0]), torch.tensor([-6.0])
    # (apo_down is left out on purpose: it lowers the chosen likelihood too.)
    for name in ("sigmoid", "conservative", "robust", "ipo", "hinge", "exo_pair", "simpo"):
        hp = {"label_smoothing": 0.1} if name in ("conservative", "robust", "exo_pair") else {}
        hp |= {"gamma": 0.5} if name == "simpo" else {}
        loss = PreferenceLoss(name, 0.01, **hp)
        assert loss(large, PR, RC, RR) <= loss(small, PR, RC, RR) + 1e-6, name


def test_gradients_flow_for_every_registered_loss():
    for name in LOSSES:
        hp = {"label_smoothing": 0.1} if name in ("conservative", "robust", "exo_pair") else {}
        hp |= {"gamma": 0.5} if name == "simpo" else {}
        pc = PC.clone().requires_grad_()
        PreferenceLoss(name, 0.1, **hp)(pc, PR, RC, RR).sum().backward()
        assert pc.grad is not None and torch.isfinite(pc.grad).all(), name


def test_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="not a registered loss"):
        PreferenceLoss("sigmoidd", 0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        PreferenceLoss("robust", 0.1)
    with pytest.raises(ValueError, match=r"takes no parameter \['gamma'\]"):
        PreferenceLoss("sigmoid", 0.1, gamma=1.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        PreferenceLoss("ipo", 0.0)

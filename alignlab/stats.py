"""How sure a difference is: means, intervals, paired differences and length-controlled win rates over prompts.

Pure functions over the per-prompt records of :mod:`alignlab.records` (a pandas DataFrame with a ``prompt_id``
column and one column per metric) or plain arrays. **The unit of resampling is the prompt.** The samples of one
prompt, and its answers from runs with other seeds, are not independent draws (an easy prompt is easy for every
sample and seed), so every interval here first pools a prompt's rows into one per-prompt mean, then resamples
prompt ids with replacement (a cluster bootstrap). Every estimate weights prompts equally: it is the mean of the
per-prompt means, which equals the mean over rows when every prompt has the same number of rows.

Intervals are percentile bootstrap intervals (:func:`scipy.stats.bootstrap`, ``method="percentile"``): defined
for data with no spread (a zero-width interval) and for a statistic refitted per resample (the length-controlled
win rate), where BCa's jackknife would need a fit per left-out prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Interval:
    """A mean over prompts with its bootstrap interval; ``n`` is the number of prompts behind it."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of per-prompt differences (b minus a) on the ``n`` prompts both sides have, its bootstrap interval,
    a two-sided sign-flip permutation p-value, and how many prompts only one side has (left out)."""

    mean: float
    low: float
    high: float
    p_value: float
    n: int
    only_a: int
    only_b: int


@dataclass(frozen=True)
class LengthControlled:
    """Raw and length-controlled win rates with bootstrap intervals over prompts.

    ``length_slope`` is the fitted weight of tanh(standardized length difference): positive when the evaluator
    prefers the longer answer. ``n`` prompts, ``n_verdicts`` verdicts (rows)."""

    win_rate: float
    low: float
    high: float
    raw: float
    raw_low: float
    raw_high: float
    length_slope: float
    n: int
    n_verdicts: int


# --- win outcomes ----------------------------------------------------------------------------------------------

def win_outcomes(verdicts: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Each verdict (the probability that the first answer is better) as a win (1), tie (0.5) or loss (0), as
    ``alignlab-eval`` counts them; a missing verdict (``None``/NaN: the evaluator could not tell) stays NaN."""
    p = np.asarray([np.nan if v is None else v for v in verdicts], dtype=float)
    return np.where(np.isnan(p), np.nan, np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0)))


def win_rate(verdicts: Sequence[float | None] | np.ndarray) -> float:
    """Share of verdicts won, ties counted half, missing verdicts left out (NaN when none is left)."""
    outcomes = win_outcomes(verdicts)
    outcomes = outcomes[~np.isnan(outcomes)]
    return float(outcomes.mean()) if len(outcomes) else math.nan


# --- means over prompts ----------------------------------------------------------------------------------------

def prompt_means(df: pd.DataFrame, metric: str, by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per prompt (per ``by`` group and prompt): the mean of ``metric`` over the prompt's rows (samples
    and seeds pooled; rows where the metric is missing left out) and ``rows``, how many rows it pooled."""
    keys = [*by, "prompt_id"]
    values = df[[*keys, metric]].copy()
    values[metric] = pd.to_numeric(values[metric], errors="coerce")
    values = values.dropna(subset=[metric])
    grouped = values.groupby(keys, sort=True, dropna=False)[metric]
    return pd.DataFrame({metric: grouped.mean(), "rows": grouped.size()}).reset_index()


def _percentile_interval(data: np.ndarray, statistic: Callable, n_resamples: int, seed: int,
                         level: float, vectorized: bool) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of ``statistic`` over the first axis of ``data`` (the prompts)."""
    from scipy.stats import bootstrap

    result = bootstrap((data,), statistic, n_resamples=n_resamples, confidence_level=level, method="percentile",
                       vectorized=vectorized, rng=np.random.default_rng(seed))
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def interval_of_means(means: np.ndarray, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of per-prompt values with a percentile bootstrap interval, resampling the values (prompts)."""
    means = np.asarray(means, dtype=float)
    if len(means) < 2:  # one prompt: a mean, but no spread to resample
        return Interval(float(means.mean()) if len(means) else math.nan, math.nan, math.nan, len(means))
    low, high = _percentile_interval(means, _mean, n_resamples, seed, level, vectorized=True)
    return Interval(float(means.mean()), float(low), float(high), len(means))


def bootstrap_mean(df: pd.DataFrame, metric: str, n_resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> Interval:
    """Mean of ``metric`` over prompts with a ``level`` bootstrap interval; ``n`` = number of prompts.

    Unit of resampling: the prompt. Rows are first pooled per ``prompt_id`` (every sample and seed of a prompt
    into one mean), then prompt ids are drawn with replacement ``n_resamples`` times; the estimate is the mean of
    the per-prompt means."""
    return interval_of_means(prompt_means(df, metric)[metric].to_numpy(), n_resamples, seed, level)


# --- paired differences ----------------------------------------------------------------------------------------

def sign_flip_p_value(differences: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test: under the null (no difference) each per-prompt
    difference is as likely to have either sign, so the observed mean is compared with the means of the
    differences under random sign flips (every flip exactly when there are at most ``n_resamples`` of them)."""
    from scipy.stats import permutation_test

    differences = np.asarray(differences, dtype=float)
    if len(differences) == 0:
        return math.nan
    result = permutation_test((differences,), _mean, permutation_type="samples", vectorized=True,
                              n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(result.pvalue)


def paired_difference(df_a: pd.DataFrame, df_b: pd.DataFrame, metric: str, n_resamples: int = 2000,
                      seed: int = 0, level: float = 0.95) -> PairedDifference:
    """``metric`` of ``df_b`` minus that of ``df_a``, paired by prompt on the prompt ids both have.

    Each side's rows are pooled per prompt (samples and seeds), giving one difference per shared prompt; the
    interval resamples those prompts (the unit of resampling), and the p-value is a two-sided paired sign-flip
    permutation test of the mean difference (:func:`sign_flip_p_value`). Pairing removes the spread between
    prompts, which is usually most of the spread. Prompts only one side has are left out and counted."""
    a = prompt_means(df_a, metric).set_index("prompt_id")[metric]
    b = prompt_means(df_b, metric).set_index("prompt_id")[metric]
    shared = a.index.intersection(b.index)
    differences = (b.loc[shared] - a.loc[shared]).to_numpy(dtype=float)
    estimate = interval_of_means(differences, n_resamples, seed, level)
    return PairedDifference(estimate.mean, estimate.low, estimate.high, sign_flip_p_value(differences, seed=seed),
                            len(shared), len(a.index.difference(shared)), len(b.index.difference(shared)))


def ordered_trend(frames: Sequence[pd.DataFrame], metric: str, n_resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> PairedDifference:
    """Does ``metric`` move steadily across arms given in a hypothesised order (e.g. answer length under the
    instructions "helpful", "short", "very short")?

    Paired by prompt, on the prompts every arm has: each arm's rows are pooled per prompt (samples and seeds), and
    each prompt gets the least-squares slope of its k arm means against the arm's rank 0..k-1 (for two arms, the
    difference). The estimate is the mean slope (units of ``metric`` per step in the order) with a bootstrap
    interval over prompts and a two-sided sign-flip p-value: under no trend a prompt's slope is as likely negative
    as positive. Prompts some arm lacks are left out and counted in ``only_a`` (here: "left out", not "only in the
    first arm"; ``only_b`` is always 0)."""
    if len(frames) < 2:
        raise ValueError(f"a trend needs at least two arms, got {len(frames)}")
    means = [prompt_means(df, metric).set_index("prompt_id")[metric] for df in frames]
    shared = means[0].index
    for m in means[1:]:
        shared = shared.intersection(m.index)
    ys = np.stack([m.loc[shared].to_numpy(dtype=float) for m in means], axis=1)  # [prompts, arms]
    ranks = np.arange(len(frames), dtype=float) - (len(frames) - 1) / 2
    slopes = (ys - ys.mean(axis=1, keepdims=True)) @ ranks / (ranks @ ranks)
    estimate = interval_of_means(slopes, n_resamples, seed, level)
    left_out = len(set().union(*(set(m.index) for m in means)) - set(shared))
    return PairedDifference(estimate.mean, estimate.low, estimate.high, sign_flip_p_value(slopes, seed=seed),
                            len(shared), left_out, 0)


# --- length-controlled win rate --------------------------------------------------------------------------------

def _length_controlled_fit(outcomes: np.ndarray, delta: np.ndarray, weights: np.ndarray,
                           C: float) -> tuple[float, float]:
    """(win rate at zero length difference, length slope) of a logistic model ``logit P(win) = b0 + b1 *
    tanh(delta / std(delta))``, as AlpacaEval 2 fits it (without its per-instruction terms: one model, one
    baseline). A fractional outcome y (a tie is 0.5) enters as a win row with weight ``y`` and a loss row with
    weight ``1 - y`` (times the row's weight), which is the binomial likelihood of y."""
    from sklearn.linear_model import LogisticRegression

    scale = delta.std()
    x = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)  # not centred: zero stays "same length"
    features = np.concatenate([x, x])[:, None]
    labels = np.concatenate([np.ones_like(x), np.zeros_like(x)])
    sample_weight = np.concatenate([outcomes, 1 - outcomes]) * np.concatenate([weights, weights])
    if sample_weight[labels == 1].sum() == 0 or sample_weight[labels == 0].sum() == 0:  # all lost / all won
        return float(labels[sample_weight > 0][0]), 0.0
    # L2 on the slope only (lbfgs leaves the intercept unpenalized): keeps the fit finite when the length
    # difference separates wins from losses exactly, without moving the zero-difference prediction.
    model = LogisticRegression(C=C).fit(features, labels, sample_weight=sample_weight)
    return float(model.predict_proba(np.zeros((1, 1)))[0, 1]), float(model.coef_[0, 0])


def length_controlled_win_rate(verdicts: Sequence[float | None] | np.ndarray, length_a: Sequence[float],
                               length_b: Sequence[float], prompt_ids: Sequence | None = None,
                               n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                               C: float = 1.0) -> LengthControlled:
    """The win rate of answers a over answers b had they been of the same length (AlpacaEval 2's
    length-controlled win rate), next to the raw win rate, each with a bootstrap interval.

    ``verdicts``: per pair, the evaluator's probability that a beats b; each becomes a win, tie (half) or loss
    (:func:`win_outcomes`), so that the raw and the length-controlled rate count the same way and differ only by
    the length adjustment. The model: ``logit P(a wins) = b0 + b1 * tanh((len_a - len_b) / std(len_a -
    len_b))`` (a scikit-learn logistic regression), read at zero length difference: ``sigmoid(b0)``. An evaluator
    that only rewards length gives about 0.5 however often the longer answer won.

    Unit of resampling: the prompt (``prompt_ids``; each pair its own prompt when omitted). Each prompt weighs
    the same in the fit (its rows share weight 1); each bootstrap resample draws prompts with replacement,
    takes all their rows and refits the whole model, the standardization included."""
    outcomes = win_outcomes(verdicts)
    delta = np.asarray(length_a, dtype=float) - np.asarray(length_b, dtype=float)
    ids = np.arange(len(outcomes)) if prompt_ids is None else np.asarray(prompt_ids, dtype=object)
    keep = ~(np.isnan(outcomes) | np.isnan(delta))
    outcomes, delta, ids = outcomes[keep], delta[keep], ids[keep]
    codes, uniques = pd.factorize(pd.Series(ids), sort=True)
    rows_of = [np.flatnonzero(codes == k) for k in range(len(uniques))]
    weights = 1.0 / np.bincount(codes, minlength=len(uniques))[codes] if len(codes) else np.zeros(0)

    def both(prompts: np.ndarray) -> np.ndarray:
        rows = np.concatenate([rows_of[int(k)] for k in prompts])  # a prompt drawn twice counts twice
        lc, _ = _length_controlled_fit(outcomes[rows], delta[rows], weights[rows], C)
        return np.array([lc, np.average(outcomes[rows], weights=weights[rows])])

    if len(uniques) == 0:
        return LengthControlled(*(math.nan,) * 7, 0, 0)
    lc, slope = _length_controlled_fit(outcomes, delta, weights, C)
    raw = float(np.average(outcomes, weights=weights))
    if len(uniques) < 2:
        return LengthControlled(lc, math.nan, math.nan, raw, math.nan, math.nan, slope, 1, len(outcomes))
    low, high = _percentile_interval(np.arange(len(uniques)), both, n_resamples, seed, level, vectorized=False)
    return LengthControlled(lc, float(low[0]), float(high[0]), raw, float(low[1]), float(high[1]), slope,
                            len(uniques), len(outcomes))

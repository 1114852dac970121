"""Schedules as pure functions of the epoch (nanoGPT's `get_lr(it)`), tested alone.

Epochs count from 1, as every progress line, MLflow step and checkpoint counts them. Scheduled
sampling (Bengio et al. 2015) ramps the probability of feeding the model its own token from its
first value at `start_epoch` (0, or max_rate for `constant`) to `max_rate` at `start_epoch +
ramp_epochs`, then holds it. With p = (epoch - start_epoch) / ramp_epochs clipped to [0, 1], the
ramps are:

- constant:        max_rate from start_epoch on (no ramp)
- linear:          max_rate * p
- exponential:     max_rate * (1 - k**p) / (1 - k), k = 0.05: fast at first, then levelling off
                   (Bengio's exponentially decaying teacher-forcing probability, fitted to the ramp)
- inverse_sigmoid: max_rate * (s(p) - s(0)) / (s(1) - s(0)), s(p) = sigmoid(10 (p - 1/2)): slow,
                   fast, slow (Bengio's inverse sigmoid decay, fitted to the ramp)

Every ramp is 0 before start_epoch, exactly max_rate from start_epoch + ramp_epochs on, never
decreasing and never above max_rate.
"""

from __future__ import annotations

import math

from trainers.config import LRSchedule, ScheduledSampling

_EXPONENTIAL_BASE = 0.05
_SIGMOID_STEEPNESS = 10.0


def ss_rate_at(epoch: int, cfg: ScheduledSampling) -> float:
    """Probability of feeding the model's own previous token in `epoch` (1, 2, ...)."""
    if epoch < cfg.start_epoch:
        return 0.0
    p = min(1.0, (epoch - cfg.start_epoch) / cfg.ramp_epochs)
    if cfg.schedule == "constant":
        fraction = 1.0
    elif cfg.schedule == "linear":
        fraction = p
    elif cfg.schedule == "exponential":
        fraction = (1.0 - _EXPONENTIAL_BASE ** p) / (1.0 - _EXPONENTIAL_BASE)
    else:  # inverse_sigmoid
        fraction = (_sigmoid(p) - _sigmoid(0.0)) / (_sigmoid(1.0) - _sigmoid(0.0))
    return cfg.max_rate * min(1.0, fraction)


def lr_factor_at(epoch: int, cfg: LRSchedule) -> float:
    """The learning-rate multiplier in `epoch` (1, 2, ...): `step` decays by `factor` after every `step_size` epochs.

    `none` and `plateau` give 1.0: plateau depends on validation scores, so the trainer drives it
    with torch's ReduceLROnPlateau instead.
    """
    if cfg.kind == "step":
        return cfg.factor ** ((epoch - 1) // cfg.step_size)
    return 1.0


def _sigmoid(p: float) -> float:
    return 1.0 / (1.0 + math.exp(-_SIGMOID_STEEPNESS * (p - 0.5)))

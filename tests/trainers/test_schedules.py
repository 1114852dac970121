import pytest
from hypothesis import given, strategies as st

from trainers.config import LRSchedule, ScheduledSampling
from trainers.schedules import lr_factor_at, ss_rate_at

SCHEDULES = ["constant", "linear", "exponential", "inverse_sigmoid"]

schedules = st.builds(
    ScheduledSampling,
    schedule=st.sampled_from(SCHEDULES),
    max_rate=st.floats(0.0, 1.0),
    start_epoch=st.integers(1, 20),
    ramp_epochs=st.integers(1, 30),
)


@given(cfg=schedules, epoch=st.integers(1, 100))
def test_rate_never_decreases_and_never_exceeds_max_rate(cfg, epoch):
    rate = ss_rate_at(epoch, cfg)
    assert 0.0 <= rate <= cfg.max_rate
    assert ss_rate_at(epoch + 1, cfg) >= rate


@given(cfg=schedules)
def test_rate_is_exact_at_both_ends_of_the_ramp(cfg):
    end = cfg.start_epoch + cfg.ramp_epochs
    assert ss_rate_at(end, cfg) == cfg.max_rate
    assert ss_rate_at(end + 50, cfg) == cfg.max_rate
    if cfg.start_epoch > 1:
        assert ss_rate_at(cfg.start_epoch - 1, cfg) == 0.0
    expected_at_start = cfg.max_rate if cfg.schedule == "constant" else 0.0
    assert ss_rate_at(cfg.start_epoch, cfg) == expected_at_start


@given(schedule=st.sampled_from(SCHEDULES), epoch=st.integers(1, 100))
def test_zero_max_rate_is_always_teacher_forcing(schedule, epoch):
    assert ss_rate_at(epoch, ScheduledSampling(schedule=schedule, max_rate=0.0)) == 0.0


def test_curves_have_their_documented_shapes():
    """Halfway up a 10-epoch ramp to 0.4: exponential is ahead of linear, inverse sigmoid exactly at it."""
    def rate(schedule, epoch):
        return ss_rate_at(epoch, ScheduledSampling(schedule=schedule, max_rate=0.4, start_epoch=2, ramp_epochs=10))

    assert rate("linear", 7) == pytest.approx(0.2)
    assert rate("exponential", 7) == pytest.approx(0.4 * (1 - 0.05 ** 0.5) / 0.95)  # 0.3117: ahead
    assert rate("inverse_sigmoid", 7) == pytest.approx(0.2)
    assert rate("inverse_sigmoid", 3) < rate("linear", 3) / 2  # slow start
    assert rate("constant", 2) == 0.4


@pytest.mark.parametrize("schedule, rates", [
    ("constant", [0.0, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]),
    ("linear", [0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4]),
    # 0.4 (1 - 0.05^p) / 0.95 at p = 1/4, 2/4, 3/4
    ("exponential", [0.0, 0.0, 0.221949, 0.326902, 0.376532, 0.4, 0.4]),
    # 0.4 (s(p) - s(0)) / (s(1) - s(0)), s(p) = 1 / (1 + e^(-10 (p - 1/2))): symmetric about the middle
    ("inverse_sigmoid", [0.0, 0.0, 0.028041, 0.2, 0.371959, 0.4, 0.4]),
])
def test_each_ramp_epoch_by_epoch(schedule, rates):
    """To 0.4 from epoch 2 over 4 epochs, epochs 1 to 7: the values trainers/schedules.py's formulas give."""
    cfg = ScheduledSampling(schedule=schedule, max_rate=0.4, start_epoch=2, ramp_epochs=4)
    assert [ss_rate_at(epoch, cfg) for epoch in range(1, 8)] == pytest.approx(rates, abs=5e-7)


def test_step_lr_decays_every_step_size_epochs():
    cfg = LRSchedule(kind="step", factor=0.5, step_size=3)
    assert [lr_factor_at(epoch, cfg) for epoch in range(1, 8)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_the_quickstart_ramp_epoch_by_epoch_as_its_progress_lines_count():
    """linear to 0.25 from epoch 2 over 2 epochs, 4 epochs: the rates docs/running.md gives for its ss arm."""
    cfg = ScheduledSampling(schedule="linear", max_rate=0.25, start_epoch=2, ramp_epochs=2)
    assert [ss_rate_at(epoch, cfg) for epoch in (1, 2, 3, 4)] == [0.0, 0.0, 0.125, 0.25]
    assert ss_rate_at(1, ScheduledSampling(schedule="linear", max_rate=0.5, ramp_epochs=2)) == 0.0  # the default: epoch 1


@pytest.mark.parametrize("kind", ["none", "plateau"])
def test_lr_factor_is_one_when_no_epoch_schedule_applies(kind):
    assert lr_factor_at(40, LRSchedule(kind=kind)) == 1.0

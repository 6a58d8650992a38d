"""Noise schedules, uniform skip and time-travel step lists (REFERENCE.md sec. 1)."""

import math

import pytest
import torch

from ddnm.sampling.schedule import (
    cosine_schedule,
    linear_schedule,
    model_calls,
    skip_steps,
    travel_indices,
    travel_steps,
)

# (steps, L, r) -> model calls per image with s = L, as the reference code counts them.
CALLS = [((100, 1, 1), 100), ((100, 2, 2), 198), ((100, 1, 2), 199), ((100, 5, 5), 480),
         ((100, 10, 3), 280), ((250, 10, 3), 730), ((20, 1, 1), 20)]


@pytest.mark.parametrize("setting,calls", CALLS)
def test_model_call_table(setting, calls):
    steps, L, r = setting
    assert model_calls(travel_steps(steps, 1000, L=L, s=L, r=r)) == calls


def _reference_jump(steps, L, r):
    """The reference code's counting (RePaint's get_schedule_jump, s = L), written from its description."""
    jumps = {j: r - 1 for j in range(0, steps - L, L)}
    t, ts = steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(L):
                t += 1
                ts.append(t)
    return ts + [-1]


@pytest.mark.parametrize("steps,L,r", [(100, 2, 2), (100, 5, 5), (20, 3, 4), (250, 10, 3)])
def test_travel_matches_reference_walk(steps, L, r):
    ref = _reference_jump(steps, L, r)
    # our walk jumps straight to j + L; the reference climbs one index at a time: drop the climb
    collapsed = [ref[0]]
    for prev, cur, nxt in zip(ref, ref[1:], ref[2:] + [None], strict=False):
        if cur > prev and nxt is not None and nxt > cur:
            continue
        collapsed.append(cur)
    assert travel_indices(steps, L=L, s=L, r=r) == collapsed


def test_travel_back_pairs_go_up_by_L_and_end_at_minus_one():
    pairs = travel_steps(100, 1000, L=5, s=5, r=2)
    ups = [(t, tn) for t, tn in pairs if tn > t]
    assert ups and all(tn - t == 50 for t, tn in ups)
    assert pairs[-1] == (0, -1)
    assert pairs[0][0] == 990


def test_interval_separate_from_length():
    # travel of length 4 every 2 steps: more travels than s = L = 4
    a = model_calls(travel_steps(40, 1000, L=4, s=2, r=2))
    b = model_calls(travel_steps(40, 1000, L=4, s=4, r=2))
    assert a == 40 + len(range(0, 36, 2)) * 4
    assert b == 40 + len(range(0, 36, 4)) * 4
    assert a > b


def test_skip_lists():
    assert skip_steps(100) == list(range(990, -1, -10)) + [-1]
    assert skip_steps(20) == list(range(950, -1, -50)) + [-1]
    assert skip_steps(1000)[:3] == [999, 998, 997]
    assert skip_steps(30)[0] == 29 * 33
    no_travel = travel_steps(100, 1000)
    assert [t for t, _ in no_travel] + [-1] == skip_steps(100)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="steps"):
        travel_steps(0, 1000)
    with pytest.raises(ValueError, match="steps"):
        travel_steps(2000, 1000)
    with pytest.raises(ValueError, match="travel setting r"):
        travel_steps(10, 1000, L=1, s=1, r=0)
    with pytest.raises(ValueError, match="travel length L"):
        travel_steps(10, 1000, L=10, s=1, r=2)


def test_linear_alpha_bar_closed_form():
    T = 1000
    abar = linear_schedule(T)
    assert abar.dtype == torch.float64 and abar.shape == (T,)
    for t in (0, 1, 10, 500, 999):
        expected = math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * k / (T - 1)) for k in range(t + 1))
        assert abar[t].item() == pytest.approx(expected, rel=1e-12)
    assert abar[0].item() == pytest.approx(1 - 1e-4)


def test_cosine_monotone():
    abar = cosine_schedule(1000)
    assert abar.dtype == torch.float64
    assert torch.all(abar[1:] < abar[:-1])
    assert 0.99 < abar[0].item() < 1.0 and abar[-1].item() < 1e-3

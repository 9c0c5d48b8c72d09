"""BG/NBD recovers known parameters from a simulation and predicts its future silence."""

from __future__ import annotations

import numpy as np

from models.bgnbd import BGNBD, fit


def simulate(n: int, true: BGNBD, horizon: float, seed: int = 0, draws: int = 400):
    """Customers from the BG/NBD story: Poisson buying, dropout after a repeat purchase with prob p."""
    rng = np.random.default_rng(seed)
    lam, p = rng.gamma(true.r, 1 / true.alpha, n), rng.beta(true.a, true.b, n)
    T = rng.uniform(30, 400, n)
    times = np.cumsum(rng.exponential(1 / lam[:, None], (n, draws)), axis=1)
    alive = np.arange(draws)[None, :] < rng.geometric(p)[:, None]  # dies after the J-th repeat purchase
    seen = alive & (times <= T[:, None])
    x = seen.sum(1)
    t_x = np.where(x > 0, np.max(np.where(seen, times, 0), axis=1), 0.0)
    future = (alive & (times > T[:, None]) & (times <= T[:, None] + horizon)).sum(1)
    return x, t_x, T, future


def test_fit_recovers_parameters_and_predicts_silence():
    true = BGNBD(r=0.8, alpha=40.0, a=0.9, b=3.0)
    x, t_x, T, future = simulate(20_000, true, 90)
    got = fit(x, t_x, T)
    assert abs(got.r - true.r) / true.r < 0.15 and abs(got.alpha - true.alpha) / true.alpha < 0.2
    assert abs(got.a - true.a) / true.a < 0.3 and abs(got.b - true.b) / true.b < 0.4
    p = got.p_no_purchase(x, t_x, T, 90)
    silent = future == 0
    assert abs(p.mean() - silent.mean()) < 0.015
    for lo, hi in zip(*np.quantile(p, [[0, .2, .4, .6, .8], [.2, .4, .6, .8, 1]])):  # calibrated in quintiles
        band = (p >= lo) & (p <= hi)
        assert abs(p[band].mean() - silent[band].mean()) < 0.03
    assert abs(got.expected_purchases(x, t_x, T, 90).mean() - future.mean()) / future.mean() < 0.1


def test_probabilities_behave_at_the_edges():
    m = BGNBD(0.8, 40.0, 0.9, 3.0)
    assert m.p_alive(np.array([0.0]), np.array([0.0]), np.array([100.0]))[0] == 1.0  # no repeat: cannot have left
    long_silence = m.p_alive(np.array([5.0]), np.array([20.0]), np.array([400.0]))[0]
    recent = m.p_alive(np.array([5.0]), np.array([390.0]), np.array([400.0]))[0]
    assert long_silence < 0.01 and recent > 0.8
    p = m.p_no_purchase(np.array([0.0, 5.0]), np.array([0.0, 20.0]), np.array([100.0, 400.0]), 90)
    assert ((p > 0) & (p < 1)).all()

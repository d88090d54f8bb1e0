"""The path-length regularizer on real networks: the overparameterized length of a matrix with equal rows is
the baseline's length (so the regularizer has the same strength for both), and the pre-0.2 row average is
exactly sqrt(R) smaller (so the two formulas cannot be confused again)."""

import math

import torch
from conftest import tiny

from opstylegan import Generator
from opstylegan.training import loss as L


def _lengths(G, ws, rows, seed=5):
    ws = ws.detach().clone().requires_grad_(True)
    img = G.synthesis_ws(ws)
    return L.path_lengths(img, ws, rows=rows, generator=torch.Generator().manual_seed(seed)).detach()


def _equal_row_pair():
    torch.manual_seed(0)
    base = Generator(tiny(False))
    over = Generator(tiny(True))
    over.load_state_dict(base.state_dict())  # shared weights: equal rows give the baseline's images
    w = base.mapping(base.sample_z(6, seed=2))  # [B, C]
    ws_base = w[:, None, None, :].repeat(1, base.num_ws, 1, 1)  # [B, L, 1, C]
    ws_over = ws_base.repeat(1, 1, over.rows, 1)  # [B, L, R, C], every row equal (a real tensor)
    return base, over, ws_base, ws_over


def test_equal_rows_give_the_baselines_length():
    base, over, ws_base, ws_over = _equal_row_pair()
    with torch.no_grad():
        torch.testing.assert_close(over.synthesis_ws(ws_over), base.synthesis_ws(ws_base), atol=1e-5, rtol=0)
    ref = _lengths(base, ws_base, "sum")
    got = _lengths(over, ws_over, "sum")
    # Not identical: the baseline's gradient w.r.t. its shared w is the SUM of the per-row gradients g_r,
    # so |g_base|^2 = sum_r |g_r|^2 + sum_{r != s} <g_r, g_s>, and the matrix length keeps only the first
    # term. Different rows drive different output channels, so the cross terms nearly cancel: the lengths
    # agree to ~10% (measured 3-6% here), while the old row average is off by sqrt(R) = 5.7x at R = 32.
    ratio = (got / ref)
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio


def test_row_average_is_sqrt_r_smaller():
    _, over, _, ws_over = _equal_row_pair()
    W = over.mapping(over.sample_z(4, seed=3))  # distinct rows [B, R, C]
    ws = W[:, None].repeat(1, over.num_ws, 1, 1)  # [B, L, R, C]
    for x in (ws_over, ws):
        s, m = _lengths(over, x, "sum"), _lengths(over, x, "mean")
        torch.testing.assert_close(s / m, torch.full_like(s, math.sqrt(over.rows)), rtol=1e-5, atol=0)
    assert over.rows >= 16  # the factor is large enough to matter in this test

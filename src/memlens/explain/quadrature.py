"""Quadrature rules for the Integrated Gradients path integral.

:func:`gauss_kronrod` gives the ``2n + 1`` nodes of the Gauss-Kronrod rule that extends the ``n``-point
Gauss-Legendre rule, with both rules' weights. Evaluating the gradients once at those nodes yields two estimates
of the same integral: the Kronrod one (used as the map) and the embedded Gauss one; their difference is the
map's error check at no extra cost (before, a second pass at half the steps cost 50 % more time).

The Kronrod nodes are the Gauss nodes plus the ``n + 1`` zeros of the Stieltjes polynomial ``E_{n+1}``
(orthogonal to every polynomial of degree ``<= n`` under the weight ``P_n``). Its coefficients in the Legendre
basis are solved for in exact rational arithmetic; its zeros, which interlace with the Gauss nodes, are found by
bracketing; the weights make the rule exact for ``P_0 ... P_{2n}``. The rule is then exact up to degree
``3n + 1`` (``3n + 2`` for odd ``n``), which the tests check.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

__all__ = ["gauss_kronrod", "gauss_legendre", "unit_interval"]


def _legendre_monomials(n: int) -> list[list[Fraction]]:
    """Monomial coefficients (lowest degree first) of the Legendre polynomials ``P_0 ... P_n``, exact."""
    polys = [[Fraction(1)], [Fraction(0), Fraction(1)]]
    for j in range(1, n):  # (j + 1) P_{j+1} = (2j + 1) x P_j - j P_{j-1}
        xp = [Fraction(0)] + polys[j]
        prev = polys[j - 1] + [Fraction(0)] * 2
        polys.append([((2 * j + 1) * xp[k] - j * prev[k]) / (j + 1) for k in range(j + 2)])
    return polys[: n + 1]


def _integral_x(poly: list[Fraction], power: int) -> Fraction:
    """``int_{-1}^{1} poly(x) x^power dx``, exact."""
    return sum((2 * c / (k + power + 1) for k, c in enumerate(poly) if (k + power) % 2 == 0), Fraction(0))


def _mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, u in enumerate(a):
        if u:
            for j, v in enumerate(b):
                out[i + j] += u * v
    return out


def _solve(m: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gaussian elimination in exact arithmetic (small systems)."""
    n = len(rhs)
    a = [row[:] + [r] for row, r in zip(m, rhs, strict=True)]
    for col in range(n):
        piv = next(r for r in range(col, n) if a[r][col] != 0)
        a[col], a[piv] = a[piv], a[col]
        for r in range(n):
            if r != col and a[r][col] != 0:
                f = a[r][col] / a[col][col]
                a[r] = [u - f * v for u, v in zip(a[r], a[col], strict=True)]
    return [a[r][n] / a[r][r] for r in range(n)]


def _bisect(f, lo: float, hi: float) -> float:
    flo = f(lo)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        fm = f(mid)
        if (fm < 0) == (flo < 0):
            lo, flo = mid, fm
        else:
            hi = mid
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=16)
def gauss_kronrod(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``(2n + 1)``-point Gauss-Kronrod rule on ``[-1, 1]`` that extends ``n``-point Gauss-Legendre.

    Returns ``(nodes, kronrod_weights, gauss_weights)``, ascending nodes; ``gauss_weights`` is 0 at the nodes
    that are not Gauss nodes, so ``sum(gauss_weights * f(nodes))`` is the embedded ``n``-point Gauss-Legendre
    estimate. Read-only arrays (the result is cached).
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    legendre = _legendre_monomials(n + 1)
    p_n = legendre[n]
    # E_{n+1} = P_{n+1} + sum_j c_j P_j over j < n+1 of the parity of n + 1 (E has the parity of its degree);
    # orthogonality to x^k, k <= n, is non-trivial only for the k that make the integrand even
    js = list(range((n + 1) % 2, n + 1, 2))
    ks = [k for k in range(n + 1) if (n + (n + 1) + k) % 2 == 0][: len(js)]
    cols = [_mul(p_n, legendre[j]) for j in js]
    target = _mul(p_n, legendre[n + 1])
    mat = [[_integral_x(col, k) for col in cols] for k in ks]
    coef = _solve(mat, [-_integral_x(target, k) for k in ks])
    leg_coef = np.zeros(n + 2)
    leg_coef[n + 1] = 1.0
    for j, c in zip(js, coef, strict=True):
        leg_coef[j] = float(c)

    def stieltjes(t: float) -> float:
        return float(np.polynomial.legendre.legval(t, leg_coef))

    g_nodes, g_weights = np.polynomial.legendre.leggauss(n)
    edges = np.concatenate([[-1.0], g_nodes, [1.0]])
    new = [_bisect(stieltjes, float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    nodes = np.concatenate([g_nodes, new])
    order = np.argsort(nodes)
    nodes = nodes[order]
    is_gauss = np.concatenate([np.ones(n, bool), np.zeros(n + 1, bool)])[order]
    # weights exact for P_0 ... P_2n (moments 2, 0, 0, ...): a well-conditioned Legendre-Vandermonde system
    vander = np.polynomial.legendre.legvander(nodes, 2 * n).T
    moments = np.zeros(2 * n + 1)
    moments[0] = 2.0
    k_weights = np.linalg.solve(vander, moments)
    gw = np.zeros(2 * n + 1)
    gw[is_gauss] = g_weights
    for arr in (nodes, k_weights, gw):
        arr.setflags(write=False)
    return nodes, k_weights, gw


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n``-point Gauss-Legendre rule on ``[-1, 1]``: ``(nodes, weights)``."""
    return np.polynomial.legendre.leggauss(int(n))


def unit_interval(nodes: np.ndarray, *weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Map a rule on ``[-1, 1]`` to ``[0, 1]``: ``alpha = (t + 1) / 2``, weights halved."""
    return ((np.asarray(nodes) + 1.0) / 2.0, *(np.asarray(w) / 2.0 for w in weights))

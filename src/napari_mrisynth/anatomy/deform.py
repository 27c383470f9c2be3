"""How anatomy deforms: smooth random fields and stationary velocity fields, on node grids.

A field is stored as ``(3, nz, ny, nx)`` float32 in millimetres with components in LPS
``(x, y, z)`` order on an axis-aligned node grid (``origin`` in LPS mm, isotropic ``step``),
the array axes in ``(z, y, x)`` order like every volume here. A stationary velocity field
``v`` becomes a diffeomorphic displacement by scaling and squaring: ``exp(v)`` is ``v /
2**n`` composed with itself ``n`` times, so the map it describes is smooth and invertible
(its inverse is ``exp(-v)``) whatever the amplitude.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_nodes: float, components: int = 0
) -> np.ndarray:
    """Gaussian white noise smoothed by ``sigma_nodes`` and scaled to unit RMS.

    With ``components`` > 0 the result is ``(components, *shape)``, each smoothed alone.
    """
    count = max(components, 1)
    noise = rng.standard_normal((count, *shape)).astype(np.float32)
    smooth = np.stack([ndi.gaussian_filter(c, sigma_nodes, mode="nearest") for c in noise])
    smooth /= np.float32(np.sqrt(float(np.mean(smooth**2))) or 1.0)
    return smooth if components else smooth[0]


def taper(shape: tuple[int, ...], width: int) -> np.ndarray:
    """1 inside, falling smoothly to 0 over ``width`` nodes at every face (a cosine ramp),
    so a field tapered by it has no displacement where its grid ends."""
    out = np.ones(shape, np.float32)
    for axis, n in enumerate(shape):
        k = np.arange(n, dtype=np.float32)
        edge = np.minimum(k, n - 1 - k)
        ramp = np.where(edge >= width, 1.0, 0.5 - 0.5 * np.cos(np.pi * edge / max(width, 1)))
        view = [None] * len(shape)
        view[axis] = slice(None)
        out = out * ramp[tuple(view)].astype(np.float32)
    return out


def sample_field(
    field: np.ndarray, points: np.ndarray, origin: np.ndarray, step: float
) -> np.ndarray:
    """Trilinear values of a ``(3, z, y, x)`` field at LPS points ``(3, N)`` (nearest value
    beyond the grid)."""
    index = ((points - np.asarray(origin, dtype=np.float64)[:, None]) / step)[::-1]
    return np.stack([ndi.map_coordinates(c, index, order=1, mode="nearest") for c in field])


def exponentiate(velocity: np.ndarray, step: float, squarings: int = 5) -> np.ndarray:
    """The displacement (mm) of ``exp(velocity)`` on the same node grid, by scaling and
    squaring: ``u = v / 2**n``, then ``n`` times ``u(x) <- u(x) + u(x + u(x))``.

    Parameters
    ----------
    velocity : ndarray (3, nz, ny, nx)
        Stationary velocity, mm, components (x, y, z).
    step : float
        Node spacing, mm.
    squarings : int
        ``n``; ``max |v| / 2**n`` should stay below a node for the composition to be exact
        to first order.
    """
    u = np.asarray(velocity, dtype=np.float32) / np.float32(2**squarings)
    grid = np.indices(u.shape[1:], dtype=np.float32)  # (z, y, x) node indices
    for _ in range(squarings):
        moved = grid + u[::-1] / np.float32(step)  # where each node's displacement lands
        u = u + np.stack([ndi.map_coordinates(c, moved, order=1, mode="nearest") for c in u])
    return u


def jacobian_determinant(displacement: np.ndarray, step: float) -> np.ndarray:
    """det(I + du/dx) per node of a ``(3, z, y, x)`` displacement (mm): below 0 folds."""
    # d u_c / d x_a: array axis of LPS axis a is 2 - a
    grad = np.empty((3, 3, *displacement.shape[1:]), np.float32)
    for c in range(3):
        for a in range(3):
            grad[c, a] = np.gradient(displacement[c], step, axis=2 - a)
    for a in range(3):
        grad[a, a] += 1.0
    return np.linalg.det(np.moveaxis(grad, (0, 1), (-2, -1)))

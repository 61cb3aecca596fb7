"""What a config does to the noise levels it trains at, as curves over ai-toolkit's timestep scale (t = 1000 s,
t = 1000 pure noise): the sampling density of the noise level s and the loss weight at s. `zlora config
timesteps` prints them and the web UI draws them; the trainer's draws (``timesteps.py``) and loss weights
(``losses.py``) use the same bends and the same weight table, so the picture is what trains.

Torch-free (numpy only): the web UI's server computes the curve without importing torch."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

# ai-toolkit's `timestep_type: weighted` loss weight as a function of t, on its 0-1000 scale. ai-toolkit draws
# t uniformly from 1000..1 and multiplies each sample's loss by a measured table (its
# toolkit/timestep_weighing/default_weighing_scheme.py: 1000 values, "calculated using flex.1-alpha", mean 1).
# These knots were fitted to that table by least squares; linear interpolation between them stays within 0.85%
# of every one of its 1000 values (0.3% typical), so `weighted` trains with the same emphasis. Most weight lies
# at t = 600-960 (up to 1.52), the ends count least (0.45 at t = 1, 0.91 at t = 1000).
AITK_WEIGHTED_KNOTS = (
    (1, 0.4458), (5, 0.4467), (10, 0.4517), (15, 0.4596), (20, 0.4756), (25, 0.4936), (30, 0.5097),
    (35, 0.5272), (40, 0.5438), (60, 0.6216), (90, 0.7055), (120, 0.7338), (150, 0.7291), (180, 0.72),
    (210, 0.7141), (240, 0.7136), (270, 0.7192), (300, 0.7308), (330, 0.7476), (360, 0.7691), (390, 0.7951),
    (420, 0.825), (450, 0.8591), (480, 0.8977), (510, 0.9395), (540, 0.9844), (570, 1.0322), (600, 1.0822),
    (630, 1.1354), (660, 1.1901), (690, 1.2449), (720, 1.3002), (750, 1.3554), (780, 1.4086), (810, 1.4584),
    (840, 1.5003), (870, 1.5226), (900, 1.508), (930, 1.4624), (960, 1.33), (962, 1.319), (964, 1.304),
    (966, 1.2893), (968, 1.276), (970, 1.257), (972, 1.2431), (974, 1.223), (976, 1.212), (978, 1.1891),
    (980, 1.178), (982, 1.1475), (984, 1.1448), (985, 1.1209), (986, 1.1016), (987, 1.1149), (988, 1.0929),
    (989, 1.0678), (990, 1.0429), (991, 1.0393), (992, 1.0166), (993, 0.9927), (994, 0.9692), (995, 0.9622),
    (996, 0.9497), (997, 0.9399), (998, 0.9251), (999, 0.9098), (1000, 0.9057),
)  # fmt: skip
CURVE_T = list(range(0, 1001, 50))  # the points `zlora config timesteps` reports


def aitk_weight(s: np.ndarray) -> np.ndarray:
    """ai-toolkit's `weighted` loss weight at noise levels ``s`` (t = 1000 s)."""
    t, w = zip(*AITK_WEIGHTED_KNOTS, strict=True)
    return np.interp(np.asarray(s, dtype=np.float64) * 1000, t, w)


def loss_weight(kind: str, s: np.ndarray) -> np.ndarray:
    """Per-sample loss weight of ``train.timestep_type`` at noise levels ``s`` (before Min-SNR)."""
    s = np.asarray(s, dtype=np.float64)
    if kind == "weighted":
        return aitk_weight(s)
    if kind == "mid_weighted":
        return 6 * s * (1 - s)
    return np.ones_like(s)


def anchors(train) -> np.ndarray:
    """``turbo_anchors``: the sigmas Z-Image's sampler visits in ``anchor_steps`` steps, highest first. The
    pipeline passes linspace(1, 1/N, N) and FlowMatchEulerDiscreteScheduler shifts them (``timestep_shift``, the
    scheduler's 3.0); a test checks these against diffusers' own scheduler."""
    n = train.anchor_steps or 9
    return flow_shift(np.linspace(1.0, 1.0 / n, n), train.timestep_shift)


def snr_weight(s, gamma: float | None):
    """Min-SNR-gamma weight at noise levels ``s`` (numpy or torch), as the None Z-Image Turbo trainer computes it
    (``utils/snr_utils.compute_snr_weights`` with its ``prediction_type="v_prediction"`` and ``snr_floor`` 0.1):
    SNR = ((1 - s) / s)^2, weight max(min(SNR, gamma) / (SNR + 1), 0.1); 1 when ``gamma`` is None. It weighs
    mid noise most (0.5 at s = 0.5) and both ends least (the floor). Per sample here; None's trainer multiplies the
    loss by the batch's mean weight (the same at batch size 1)."""
    if gamma is None:
        return s * 0 + 1
    snr = ((1 - s) / s.clip(1e-6)) ** 2
    return (snr.clip(max=gamma) / (snr + 1)).clip(min=0.1)


def flow_shift(s, shift: float):
    """The scheduler's shift of noise levels: s -> shift s / (1 + (shift - 1) s) (numpy or torch)."""
    return shift * s / (1 + (shift - 1) * s)


def bend(s, train) -> object:
    """The steps after the base draw, shared by the trainer (torch) and the curves (numpy): the flow shift of
    ``shift``, the bias (``high_noise``: s -> 1 - (1 - s)^e, ``low_noise``: s -> s^e, e =
    ``timestep_bias_exponent``), then the range ``[min_timestep, max_timestep] / 1000``."""
    if train.timestep_type == "shift":  # the shift the inference scheduler uses: mass moves to high noise
        s = flow_shift(s, train.timestep_shift)
    e = train.timestep_bias_exponent
    if train.timestep_bias == "high_noise":
        s = 1 - (1 - s) ** e
    elif train.timestep_bias == "low_noise":
        s = s**e
    lo, hi = train.min_timestep / 1000, train.max_timestep / 1000
    return lo + (hi - lo) * s


def _normal_quantiles(q: np.ndarray) -> np.ndarray:
    """Phi^-1(q) (the standard library's; no scipy needed for a curve of 21 points)."""
    inv = NormalDist().inv_cdf
    return np.array([inv(float(x)) for x in q])


def anchor_draws(train, u_anchor, z, u_mix, u_flat):
    """``turbo_anchors`` from uniform draws ``u_*`` and a standard normal ``z`` (numpy or torch, one per sample):
    an anchor (index from ``u_anchor``) + ``anchor_jitter`` z, or with probability ``anchor_mix`` (``u_mix``) a
    uniform level ``u_flat``; clipped to [0, 1]. The trainer and the curve share it."""
    a = anchors(train)
    if isinstance(u_anchor, np.ndarray):
        s = a[(u_anchor * len(a)).astype(int).clip(0, len(a) - 1)] + train.anchor_jitter * z
        return np.where(u_mix < train.anchor_mix, u_flat, s).clip(0.0, 1.0)
    import torch  # the trainer's draw, on its device (this module stays importable without torch)

    table = torch.tensor(a, dtype=u_anchor.dtype, device=u_anchor.device)
    s = table[(u_anchor * len(a)).long().clamp(0, len(a) - 1)] + train.anchor_jitter * z
    return torch.where(u_mix < train.anchor_mix, u_flat, s).clamp(0.0, 1.0)


def density(train, s: np.ndarray, resolution: int = 20001) -> np.ndarray:
    """Probability density (per unit of s) of the noise levels ``train`` draws, at ``s``: every draw is a monotone
    map of one uniform quantile q, so the density is dq/ds along the mapped quantiles (``turbo_anchors``, a
    mixture: a histogram of 200,000 draws, bins centred on ``s``)."""
    if train.timestep_type == "turbo_anchors":
        rng = np.random.default_rng(0)
        n = 200_000
        draws = bend(
            anchor_draws(train, rng.random(n), rng.standard_normal(n), rng.random(n), rng.random(n)), train
        )
        s = np.asarray(s, dtype=np.float64)
        width = float(np.min(np.diff(s))) if len(s) > 1 else 0.05
        return np.array([np.mean(np.abs(draws - x) <= width / 2) / width for x in s])
    q = (np.arange(resolution) + 0.5) / resolution
    base = 1 / (1 + np.exp(-_normal_quantiles(q))) if train.timestep_type == "sigmoid" else q
    mapped = bend(base, train)
    dq_ds = np.gradient(q, mapped)
    s = np.asarray(s, dtype=np.float64)
    inside = (s >= train.min_timestep / 1000) & (s <= train.max_timestep / 1000)  # nothing is drawn outside
    return np.where(inside, np.interp(s, mapped, dq_ds), 0.0)


def timestep_table(train) -> dict[str, list[float]]:
    """{"t": [0, 50, ..., 1000], "density": [...], "weight": [...]} of a resolved ``train`` section."""
    s = np.array(CURVE_T, dtype=np.float64) / 1000
    dens = [round(float(x), 4) for x in density(train, s)]
    return {
        "t": list(CURVE_T),
        "density": dens,
        "weight": [
            round(float(x), 4) for x in loss_weight(train.timestep_type, s) * snr_weight(s, train.snr_gamma)
        ],
    }

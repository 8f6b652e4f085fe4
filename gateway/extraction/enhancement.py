"""Contextual enhancement with a bank of oriented Gabor filters.

Each filter is tuned to one orientation bin and one ridge period; every pixel takes the
response of the filter that matches its local orientation and period (Hong, Wan and Jain
1998). The filters are applied in the frequency domain: the image is transformed once,
each Gabor's transfer function is written down analytically (two Gaussians at plus and
minus the ridge frequency, across the ridges), and only the inverse transforms are paid
per filter. The per-pixel choice is an array selection: no Python loop over pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.fft

from gateway.extraction.frequency import period_bins
from gateway.extraction.params import ExtractionParams


def gabor_transfer(
    f_along: np.ndarray, f_across: np.ndarray, period: float, params: ExtractionParams
) -> np.ndarray:
    """Frequency response of an even-symmetric, zero-DC Gabor filter.

    The spatial filter is exp(-across^2 / 2 sa^2 - along^2 / 2 sv^2) cos(2 pi across / T)
    minus the multiple of its envelope that makes it blind to flat brightness; frequencies
    are in cycles per pixel along and across the ridges.
    """
    sa = params.gabor_sigma_across * period
    sv = params.gabor_sigma_along * period
    f0 = 1.0 / period
    k = -2.0 * np.pi**2
    along = np.exp(k * sv**2 * f_along**2)
    lobe = np.exp(k * sa**2 * (f_across - f0) ** 2) + np.exp(k * sa**2 * (f_across + f0) ** 2)
    dc = 2.0 * np.exp(k * sa**2 * f0**2)  # the lobes' value at zero frequency
    return (along * (lobe - dc * np.exp(k * sa**2 * f_across**2))).astype(np.float32)


def gabor_enhance(
    normalised: np.ndarray,
    theta: np.ndarray,
    period: np.ndarray,
    mask: np.ndarray,
    params: ExtractionParams,
) -> np.ndarray:
    """Ridges-positive enhanced image (float32), zero outside the mask."""
    h, w = normalised.shape
    n_theta = params.gabor_orientations
    periods = period_bins(period, mask, params.gabor_periods)
    theta_bin = np.round(theta / (np.pi / n_theta)).astype(np.int32) % n_theta
    period_bin = np.argmin(np.abs(period[..., None] - periods[None, None, :]), axis=2)

    # Reflective padding keeps the circular convolution from wrapping the far edge in.
    pad = int(np.ceil(2.0 * params.max_period))
    padded = cv2.copyMakeBorder(normalised, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    ph = cv2.getOptimalDFTSize(padded.shape[0])
    pw = cv2.getOptimalDFTSize(padded.shape[1])
    spectrum = scipy.fft.rfft2(padded, s=(ph, pw), workers=1)
    # A Gabor passes only a ring around its ridge frequency: beyond fmax the transfer is
    # below exp(-4.5) of its peak, so products are formed on the low-frequency block only.
    fmax = 1.0 / float(periods.min()) + 3.0 / (2.0 * np.pi * params.gabor_sigma_across
                                               * float(periods.min()))
    r = min(ph // 2, int(np.ceil(fmax * ph)) + 1)
    c = min(pw // 2 + 1, int(np.ceil(fmax * pw)) + 1)
    rows = np.r_[0:r, ph - r + 1 : ph] if r > 1 else np.r_[0:1]
    block = spectrum[rows, :c]
    fy = scipy.fft.fftfreq(ph).astype(np.float32)[rows, None]
    fx = scipy.fft.rfftfreq(pw).astype(np.float32)[None, :c]
    product = np.zeros_like(spectrum)

    out = np.zeros_like(normalised)
    for t in range(n_theta):
        in_theta = (theta_bin == t) & mask
        if not in_theta.any():
            continue
        a = t * np.pi / n_theta  # ridge direction, image frame (x right, y down)
        f_along = fx * np.float32(np.cos(a)) + fy * np.float32(np.sin(a))
        f_across = -fx * np.float32(np.sin(a)) + fy * np.float32(np.cos(a))
        for p, per in enumerate(periods):
            sel = in_theta & (period_bin == p)
            if not sel.any():
                continue
            product[rows, :c] = block * gabor_transfer(f_along, f_across, float(per), params)
            response = scipy.fft.irfft2(product, s=(ph, pw), workers=1)
            out[sel] = response[pad : pad + h, pad : pad + w][sel]
    return out

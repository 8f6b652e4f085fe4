"""Gabor enhancement (frequency-domain bank, coarse grid) and the orientation field."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import scipy.fft

from gateway.extraction.contrast import normalise_contrast
from gateway.extraction.enhancement import (
    _filter_block,
    _filter_factors,
    gabor_enhance,
    gabor_transfer,
)
from gateway.extraction.frequency import ridge_period
from gateway.extraction.orientation import GradientTensor, gradient_tensor, orientation_field
from gateway.extraction.params import DEFAULT_PARAMS
from gateway.extraction.scaling import to_working_resolution

EXACT = replace(DEFAULT_PARAMS, gabor_oversampling=0.0)


def _whorl(size: int = 320, period: float = 9.0) -> np.ndarray:
    """Concentric ridges: every orientation bin is used, the period is constant."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.hypot(xx - 0.45 * size, yy - 0.55 * size)
    return np.clip(128 + 90 * np.cos(2 * math.pi * r / period), 0, 255).astype(np.uint8)


def _stages(image: np.ndarray, mask: np.ndarray | None = None):
    work, _ = to_working_resolution(image, 500.0)
    normalised = normalise_contrast(work, DEFAULT_PARAMS.normalise_sigma)
    if mask is None:
        mask = np.zeros(work.shape, bool)
        mask[20:-20, 20:-20] = True
    theta = orientation_field(gradient_tensor(work, DEFAULT_PARAMS), mask, DEFAULT_PARAMS)
    period = ridge_period(normalised, mask, DEFAULT_PARAMS)
    return normalised, theta, period, mask


@pytest.mark.parametrize("direction", [0.0, 0.4, 2.0])
@pytest.mark.parametrize("period", [6.0, 9.0, 12.0])
def test_transfer_is_the_spectrum_of_the_spatial_gabor(direction, period):
    n = 128
    d = np.arange(n) - n // 2
    yy, xx = (g.astype(np.float64) for g in np.meshgrid(d, d, indexing="ij"))
    along = xx * math.cos(direction) + yy * math.sin(direction)
    across = -xx * math.sin(direction) + yy * math.cos(direction)
    sa, sv = DEFAULT_PARAMS.gabor_sigma_across * period, DEFAULT_PARAMS.gabor_sigma_along * period
    envelope = np.exp(-across**2 / (2 * sa**2) - along**2 / (2 * sv**2))
    kernel = envelope * np.cos(2 * math.pi * across / period)
    kernel -= envelope * kernel.sum() / envelope.sum()  # blind to flat brightness
    spectrum = np.fft.fft2(np.fft.ifftshift(kernel))
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    f_along = fx * math.cos(direction) + fy * math.sin(direction)
    f_across = -fx * math.sin(direction) + fy * math.cos(direction)
    transfer = gabor_transfer(f_along, f_across, period, DEFAULT_PARAMS)
    peak = np.abs(spectrum).max()
    assert np.abs(spectrum.imag).max() < 1e-6 * peak  # even filter: real spectrum
    assert np.abs(spectrum.real / peak - transfer / transfer.max()).max() < 2e-3
    assert transfer[0, 0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("direction", [0.0, 0.3, 1.2, 2.5])
@pytest.mark.parametrize("period", [5.0, 9.0, 15.0])
def test_kernel_writes_the_transfer_into_the_coarse_rows(direction, period):
    full, coarse, r, c = 200, 96, 40, 45
    rows = np.r_[0:r, full - r + 1 : full]
    coarse_rows = np.r_[0:r, coarse - r + 1 : coarse]
    fy, fx = scipy.fft.fftfreq(full)[rows], scipy.fft.rfftfreq(full)[:c]
    block = np.full((rows.size, c), 2.0 - 1.0j, np.complex64)
    product = np.zeros((coarse, coarse // 2 + 1), np.complex64)
    _filter_block(block, *_filter_factors(fy, fx, direction, period, DEFAULT_PARAMS),
                  coarse_rows, product)
    f_along = fx[None, :] * math.cos(direction) + fy[:, None] * math.sin(direction)
    f_across = fy[:, None] * math.cos(direction) - fx[None, :] * math.sin(direction)
    expected = block * gabor_transfer(f_along, f_across, period, DEFAULT_PARAMS)
    np.testing.assert_allclose(product[coarse_rows, :c], expected, atol=2e-6, rtol=1e-4)
    untouched = np.ones(product.shape, bool)
    untouched[coarse_rows, :c] = False
    assert not product[untouched].any()


def _plain_filter_bank(normalised, theta, period, mask, params):
    """The textbook method: whole padded frame, one full inverse transform per bin."""
    n = params.gabor_orientations
    per = float(np.median(period[mask]))
    pad = int(np.ceil(2.0 * params.max_period))
    padded = cv2.copyMakeBorder(normalised, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    spectrum = np.fft.fft2(padded)
    fy, fx = np.meshgrid(np.fft.fftfreq(padded.shape[0]), np.fft.fftfreq(padded.shape[1]),
                         indexing="ij")
    bins = np.round(theta / (np.pi / n)).astype(int) % n
    out = np.zeros_like(normalised)
    h, w = normalised.shape
    for t in range(n):
        a = t * np.pi / n
        transfer = gabor_transfer(fx * np.cos(a) + fy * np.sin(a),
                                  fy * np.cos(a) - fx * np.sin(a), per, params)
        response = np.fft.ifft2(spectrum * transfer).real[pad : pad + h, pad : pad + w]
        out[bins == t] = response[bins == t]
    return out * mask


def test_full_resolution_mode_is_the_plain_filter_bank_inside_the_mask_box():
    normalised, theta, period, _ = _stages(_whorl())
    mask = np.zeros(normalised.shape, bool)
    mask[60:250, 40:200] = True  # the bank only transforms this box and its margin
    mask[100:120, 100:130] = False
    got = gabor_enhance(normalised, theta, period, mask, EXACT)
    want = _plain_filter_bank(normalised, theta, period, mask, EXACT)
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    assert not got[~mask].any()


def test_coarse_grid_agrees_with_full_resolution():
    normalised, theta, period, mask = _stages(_whorl())
    exact = gabor_enhance(normalised, theta, period, mask, EXACT)
    coarse = gabor_enhance(normalised, theta, period, mask, DEFAULT_PARAMS)
    assert DEFAULT_PARAMS.gabor_oversampling > 0.0
    assert not coarse[~mask].any()
    inside = mask.copy()
    inside[:30], inside[-30:], inside[:, :30], inside[:, -30:] = False, False, False, False
    same_sign = np.mean((coarse[inside] > 0) == (exact[inside] > 0))
    rms = np.sqrt(np.mean((coarse[inside] - exact[inside]) ** 2) / np.mean(exact[inside] ** 2))
    assert same_sign > 0.97
    assert rms < 0.15
    # Ridges come out positive where the print is dark: the phase is not shifted.
    dark = normalised[inside] > 0.5
    assert np.mean(coarse[inside][dark] > 0) > 0.95


def test_empty_mask_gives_an_empty_image():
    normalised, theta, period, _ = _stages(_whorl(96))
    mask = np.zeros(normalised.shape, bool)
    out = gabor_enhance(normalised, theta, period, mask, DEFAULT_PARAMS)
    assert out.shape == normalised.shape and not out.any()


def test_orientation_field_is_the_doubled_angle_mean_folded_into_0_pi():
    rng = np.random.default_rng(3)
    gx, gy = rng.normal(size=(2, 120, 140)).astype(np.float32)
    gx[:, :70] += 2.0  # half the field has a dominant direction, half is noise
    tensor = GradientTensor(gxx=gx * gx, gyy=gy * gy, gxy=gx * gy)
    mask = np.ones(gx.shape, bool)
    theta = orientation_field(tensor, mask, DEFAULT_PARAMS)
    assert theta.dtype == np.float32
    assert np.all((theta >= 0.0) & (theta < np.pi))
    c, s = tensor.gxx - tensor.gyy, 2.0 * tensor.gxy
    norm = np.sqrt(c * c + s * s) + 1e-9
    sigma = DEFAULT_PARAMS.orientation_smooth_sigma
    from gateway.extraction.smoothing import smooth_field

    expected = np.mod(0.5 * np.arctan2(smooth_field(s / norm, sigma),
                                       smooth_field(c / norm, sigma)) + np.pi / 2, np.pi)
    diff = np.abs(np.angle(np.exp(2j * (theta.astype(np.float64) - expected)))) / 2
    assert diff.max() < 1e-3

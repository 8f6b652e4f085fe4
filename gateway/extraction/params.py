"""Every tunable number of the extraction pipeline, in one frozen dataclass.

Lengths are in pixels at the pipeline's working resolution (500 ppi), where a ridge period
is 8-11 px on most adult fingers. Stages read only the fields they need; an experiment
changes a value with ``dataclasses.replace(DEFAULT_PARAMS, field=value)``.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKING_PPI = 500.0


@dataclass(frozen=True)
class ExtractionParams:
    """Parameters of all extraction stages, grouped by stage in field order."""

    # normalisation: local mean and contrast, so that dry and wet prints look alike
    normalise_sigma: float = 12.0

    # segmentation: blocks whose oriented-ridge energy is too low are background
    segment_block: int = 16
    segment_sigma: float = 6.0
    segment_rel_threshold: float = 0.12  # share of the 95th percentile of ridge energy
    segment_abs_threshold: float = 0.015  # floor, so a blank image is all background
    segment_min_coherence: float = 0.25
    segment_close_radius: int = 12
    segment_min_area_px: int = 2500  # ~ 10 mm^2 at 500 ppi

    # orientation field (gradient structure tensor, doubled-angle smoothing)
    gradient_sigma: float = 1.0
    orientation_sigma: float = 7.0
    orientation_smooth_sigma: float = 9.0

    # ridge frequency: blockwise spectrum peak, smoothed, clipped to plausible periods
    frequency_block: int = 32
    frequency_step: int = 16
    min_period: float = 5.0
    max_period: float = 15.0
    default_period: float = 9.0

    # enhancement: oriented Gabor bank, one response per (orientation bin, period bin)
    gabor_orientations: int = 16
    gabor_periods: int = 1
    gabor_sigma_across: float = 0.5  # times the period
    gabor_sigma_along: float = 0.65  # times the period
    # Responses are computed on a grid this much finer than their band's Nyquist rate and
    # interpolated (0: at full resolution, exact and about three times slower).
    gabor_oversampling: float = 1.25

    # binarisation and thinning
    min_blob_area: int = 20  # ridge pieces or valley holes smaller than this are noise

    # filters on the minutiae
    border_margin: float = 10.0  # erode the mask by this much: rim minutiae are noise
    truncation_reach: float = 0.0  # an ending with the rim this close behind it was cut
    trace_length: int = 20  # how far branches are followed along the skeleton
    direction_length: int = 10  # where along a branch its direction is read
    spur_length: int = 6  # an ending joined to a bifurcation this close is a spur
    short_ridge_length: int = 12  # an ending-to-ending ridge this short is a dot or island
    bridge_length: int = 8  # a bifurcation-to-bifurcation link this short is a bridge
    break_distance: float = 10.0  # facing endings this close are one broken ridge
    break_angle: float = 0.6  # radians of tolerance for "facing"
    cluster_radius: float = 10.0
    cluster_count: int = 3  # a minutia with this many neighbours within the radius is noise

    # quality and the final cap
    max_minutiae: int = 60


DEFAULT_PARAMS = ExtractionParams()
# Half the Gabor bank: for slow gateways (ink-fast).
FAST_PARAMS = ExtractionParams(gabor_orientations=8)

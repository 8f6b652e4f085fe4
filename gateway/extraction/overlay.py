"""A picture of what extraction found: the print, its mask and its minutiae.

For people checking an extractor by eye (``ink-gateway show``); nothing here is used to
match. Endings are drawn in red, bifurcations in blue, other minutiae in yellow, each with
a tick along its direction, so a wrong angle convention shows as ticks pointing the wrong
way along the ridges.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from matcher.template import MinutiaKind, Template

# BGR colours, as OpenCV draws.
ENDING_COLOUR = (0, 0, 255)
BIFURCATION_COLOUR = (255, 64, 0)
OTHER_COLOUR = (0, 200, 255)
MASK_TINT = (0, 160, 0)


def draw_overlay(
    image: np.ndarray, template: Template, mask: np.ndarray | None = None, zoom: int = 2
) -> np.ndarray:
    """BGR uint8 picture of ``image`` with the mask tinted and the minutiae marked.

    ``template`` must be in the image's pixel frame (as :func:`extract` returns it). The
    picture is enlarged ``zoom`` times so that the marks do not hide the ridges.
    """
    if image.ndim != 2:
        raise ValueError("draw_overlay needs a 2-D grayscale image")
    bgr = cv2.cvtColor(np.ascontiguousarray(image, np.uint8), cv2.COLOR_GRAY2BGR)
    if mask is not None:
        m = mask.astype(bool)
        if m.shape != image.shape:
            m = cv2.resize(m.astype(np.uint8), (image.shape[1], image.shape[0]),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
        tint = np.array(MASK_TINT, np.float32)
        # Background gets the tint: the print itself stays easy to read.
        bgr[~m] = (0.55 * bgr[~m] + 0.45 * tint).astype(np.uint8)
    z = max(1, int(zoom))
    if z > 1:
        bgr = cv2.resize(bgr, None, fx=z, fy=z, interpolation=cv2.INTER_NEAREST)
    tick = 7 * z
    for x, y, a, k in zip(template.x, template.y, template.angle, template.kind, strict=True):
        colour = {MinutiaKind.ENDING: ENDING_COLOUR,
                  MinutiaKind.BIFURCATION: BIFURCATION_COLOUR}.get(int(k), OTHER_COLOUR)
        cx, cy = (float(x) + 0.5) * z, (float(y) + 0.5) * z
        centre = (round(cx), round(cy))
        # Image-coordinate direction of an ISO angle: (cos a, -sin a), y points down.
        end = (round(cx + tick * math.cos(a)), round(cy - tick * math.sin(a)))
        if k == MinutiaKind.BIFURCATION:
            cv2.rectangle(bgr, (centre[0] - 3 * z, centre[1] - 3 * z),
                          (centre[0] + 3 * z, centre[1] + 3 * z), colour, 1)
        else:
            cv2.circle(bgr, centre, 3 * z, colour, 1)
        cv2.line(bgr, centre, end, colour, 1)
    return bgr

"""glibc malloc tuning for processes that make and drop arrays of megabytes all the time.

A gateway's extraction makes and drops a few dozen arrays of 0.25-3 MB per image, and a
matcher's bulk enrolment arrays of several MB per batch (cylinders, sketches, codes).
With glibc's defaults the freed memory at the top of the heap goes back to the kernel
once it passes a threshold that adapts to the largest freed block, and the next image
(or batch) asks for it again: each of those pages comes back by a page fault, zeroed.

Keeping up to 32 MB of freed heap and serving blocks under 32 MB from the heap (instead
of fresh mmaps) removes those faults; the price is that much freed memory held by the
process. Measured on the development machine (a VM):

- the fast extraction mode on 500 x 500 prints had 1,200-3,000 faults and 5-10 ms of
  system time per image, and went from 56 to 47 ms of CPU per image (three interleaved
  runs of 30 CrossMatch prints);
- bulk enrolment of 32,768 synthetic fingers took 243 instead of 280-290 us of CPU per
  finger.

The setting is process-wide, so programs set it at start (``ink-gateway``,
``ink-matcher serve``, the speed runners), not the libraries; elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

KEPT_BYTES = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit systems
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_heap(kept_bytes: int = KEPT_BYTES) -> bool:
    """Ask glibc to keep up to ``kept_bytes`` of freed heap and to serve allocations
    under that size from the heap; whether it took both settings."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Both: setting either one stops glibc adapting the other to the workload.
    trimmed = mallopt(_M_TRIM_THRESHOLD, kept_bytes)
    mapped = mallopt(_M_MMAP_THRESHOLD, kept_bytes)
    return bool(trimmed and mapped)

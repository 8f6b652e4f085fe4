"""File import as a device: fingerprint files handed over by a handheld, one per capture.

Many field scanners do not stream images; they hand over files (a shared folder, a USB
stick, a Bluetooth transfer). ``file:<path>`` opens either one file or a folder that acts
as an inbox: every capture takes the next file by name that has not been served yet,
so files that arrive later are picked up too, and an exhausted inbox waits up to the
capture timeout for the next one before raising :class:`NoMoreImages` (a
:class:`~gateway.devices.base.NoFinger`). PNG, TIFF, BMP and WSQ are decoded with
:func:`gateway.extraction.decode.load_image`; ANSI/NIST-ITL transactions (recognised by
content) give one capture per Type-4 or Type-14 image, with its finger position in
``scan.device.details["finger_position"]``. With ``delete=True`` each file is removed
once read, so no probe print stays on the gateway's disk.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from gateway.devices.ansi_nist import AnsiNistError, is_ansi_nist, read_fingerprints
from gateway.devices.base import Device, DeviceError, DeviceInfo, NoFinger, Scan
from gateway.extraction.decode import ImageDecodeError, load_image

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".bmp", ".wsq", ".pgm", ".jpg", ".jpeg"})
ANSI_NIST_SUFFIXES = frozenset({".an2", ".an2k", ".eft", ".nist", ".ebts", ".int"})
SUFFIXES = IMAGE_SUFFIXES | ANSI_NIST_SUFFIXES
# A fingerprint file (even a ten-print transaction of raw images) is far below this; a
# larger one is a mistake or an attack, not something to read into memory.
MAX_FILE_BYTES = 64 * 1024 * 1024


class NoMoreImages(NoFinger):
    """Every file has been served and no new one arrived before the capture timeout."""

    default_officer_message = (
        "No new fingerprint image from the handheld: scan the finger on the handheld "
        "and send the file again"
    )


class UnreadableFile(DeviceError):
    """A handed-over file is not a fingerprint image; it is skipped from now on."""

    default_officer_message = (
        "The file from the handheld is not a readable fingerprint image: scan the finger "
        "again and send a new file"
    )


@dataclass(frozen=True, eq=False)
class _Pending:
    image: np.ndarray
    ppi: float
    source: str
    details: dict[str, object]


class FileDevice(Device):
    """Serve fingerprint files as captures.

    ``source`` is a folder (an inbox, re-listed on every capture), one file, or a list
    of files served in the given order. ``delete`` removes each file after it has been
    read. ``poll_interval`` paces re-listing an empty inbox while a capture waits.
    """

    kind = "file"

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        *,
        delete: bool = False,
        poll_interval: float = 0.2,
    ) -> None:
        self.delete = delete
        self.poll_interval = poll_interval
        self._folder: Path | None = None
        self._files: deque[Path] = deque()
        self._served: set[str] = set()
        self._pending: deque[_Pending] = deque()
        self._closed = False
        if isinstance(source, str | Path):
            path = Path(source)
            if path.is_dir():
                self._folder = path
            elif path.is_file():
                self._files.append(path)
            else:
                raise DeviceError(f"{path} is neither a file nor a folder", retryable=False,
                                  officer_message="The import folder or file does not exist: "
                                                  "check the device URL")
            label = str(path)
        else:
            self._files.extend(Path(p) for p in source)
            label = ",".join(str(p) for p in self._files)
        self.info = DeviceInfo(self.kind, "file import", f"file:{label}", None,
                               {"folder": self._folder is not None, "delete": delete})

    # -- public ---------------------------------------------------------------------------
    def capture(
        self,
        *,
        timeout: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Scan:
        """The next image; waits up to ``timeout`` s for a new file in an inbox folder."""
        if self._closed:
            raise DeviceError("file import device is closed", retryable=False)
        deadline = time.monotonic() + timeout
        while not self._pending:
            path = self._next_file()
            if path is not None:
                self._load(path, progress)
                continue
            remaining = deadline - time.monotonic()
            if self._folder is None:
                raise NoMoreImages("every imported file has been used", retryable=False,
                                   officer_message="All imported fingerprint files have been "
                                                   "used: import new ones")
            if remaining <= 0:
                raise NoMoreImages(f"no new file in {self._folder} within {timeout:.1f} s")
            # Pacing only: correctness never depends on this wait.
            time.sleep(min(self.poll_interval, remaining))
        item = self._pending.popleft()
        device = DeviceInfo(self.kind, self.info.model, self.info.url, None,
                            {**self.info.details, **item.details})
        return Scan(item.image, item.ppi, device, 0.0)

    def close(self) -> None:
        """Forget queued images; safe to call more than once."""
        self._closed = True
        self._pending.clear()

    # -- files ----------------------------------------------------------------------------
    def _next_file(self) -> Path | None:
        if self._folder is None:
            return self._files.popleft() if self._files else None
        try:
            names = sorted(p for p in self._folder.iterdir()
                           if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
                           and p.name not in self._served and p.is_file())
        except OSError as error:
            raise DeviceError(f"cannot list {self._folder}: {error}",
                              officer_message="The import folder cannot be read: check that "
                                              "the handheld is connected") from error
        if not names:
            return None
        self._served.add(names[0].name)
        return names[0]

    def _load(self, path: Path, progress: Callable[[int, int], None] | None) -> None:
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise UnreadableFile(f"{path.name}: {size} bytes is too large for a "
                                     "fingerprint file")
            data = path.read_bytes()
        except OSError as error:
            raise UnreadableFile(f"cannot read {path.name}: {error}") from error
        finally:
            if self.delete:
                with contextlib.suppress(OSError):
                    path.unlink()
        if progress is not None:
            progress(len(data), len(data))
        try:
            if is_ansi_nist(data):
                fingers = read_fingerprints(data)
                if not fingers:
                    raise UnreadableFile(f"{path.name}: the transaction has no Type-4 or "
                                         "Type-14 fingerprint image")
                for finger in fingers:
                    self._pending.append(_Pending(finger.image, finger.ppi, path.name, {
                        "file": path.name, "finger_position": finger.finger_position,
                        "impression": finger.impression, "record_type": finger.record_type,
                        "compression": finger.compression, "ppi_source": "file",
                    }))
                return
            loaded = load_image(data)
        except (AnsiNistError, ImageDecodeError) as error:
            raise UnreadableFile(f"{path.name}: {error}") from error
        self._pending.append(_Pending(loaded.image, loaded.ppi, path.name, {
            "file": path.name, "finger_position": 0, "ppi_source": loaded.ppi_source,
        }))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def open_files(target: str, *, timeout: float = 5.0) -> FileDevice:
    """Open ``target`` = ``<file or folder>[?delete=1]``; ``timeout`` is unused here."""
    path, _, query = target.partition("?")
    delete = False
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "delete" or value.lower() not in _TRUE | _FALSE:
            raise DeviceError(f"bad file device URL {target!r}: use ?delete=0 or ?delete=1",
                              officer_message="The scanner setting is wrong: check the "
                                              "device URL", retryable=False)
        delete = value.lower() in _TRUE
    return FileDevice(path, delete=delete)

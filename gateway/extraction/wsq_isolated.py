"""WSQ decoding in a child process, so that a corrupt file cannot take the caller down.

Why this exists: the ``wsq`` package (NBIS C code behind a Pillow plugin) frees memory
twice on some corrupt files (found by fuzzing), and glibc then aborts the *whole*
process -- one bad file from a handheld would kill the gateway or a bulk enrolment run.
No Python ``except`` can catch that, so the decoder runs in a long-lived child process
(started on first use, about 60 ms) and this side only reads what it answers:

- the image bytes go to the child over a pipe and the pixels come back over a pipe; a
  probe print is never written to disk (no temporary files);
- a child that dies (by a signal or otherwise), answers garbage, or does not answer
  within the time limit is killed and reaped, the call raises :class:`WsqDecodeError`
  ("... crashed on this file; it is corrupt -- re-export it ..."), and the next call
  starts a fresh child;
- callers in several threads take turns on one child (a lock); a process that forks
  gets a child of its own on first use; children are shut down at interpreter exit.

The parent reads the declared size from the WSQ header itself (:func:`read_wsq_size`),
so absurd sizes are refused before any C code sees the file. The plugin is imported only
in the child. This file is also the child's program: it runs as a script (``python -P
wsq_isolated.py``) so that the child imports Pillow and ``wsq`` and nothing of INK.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

# WSQ markers (IAFIS-IC-0110): start and end of image, start of frame, and the segments
# that carry a two-byte length (SOB, DTT, DQT, DHT, DRT, COM).
_SOI, _EOI, _SOF = b"\xff\xa0", b"\xff\xa1", b"\xff\xa2"
_SEGMENTS = frozenset(bytes([0xFF, code]) for code in range(0xA3, 0xA9))

# Time allowed for one decode: NBIS decodes about 60 ms per Mpixel here, so this leaves
# room for a loaded machine and still ends a hang in seconds.
BASE_TIMEOUT_S = 5.0
TIMEOUT_S_PER_MPIXEL = 0.5
STARTUP_TIMEOUT_S = 30.0
# The decoder allocates a few float planes per pixel; a file that asks for far more is
# refused by the child's allocator instead of exhausting the machine.
CHILD_MEMORY_LIMIT = 2 << 30

# Frames on the pipes: request = magic, self-destruct alarm (s), length, bytes;
# reply = magic, status, width, height, length, pixels or an error message.
_REQUEST = struct.Struct(">4sII")
_REPLY = struct.Struct(">4sBIII")
_REQUEST_MAGIC, _REPLY_MAGIC = b"WSQq", b"WSQr"
_OK, _FAILED, _READY = 0, 1, 2
_MAX_MESSAGE = 4096

_CORRUPT = "it is corrupt -- re-export it from the scanner software"


class WsqDecodeError(ValueError):
    """The WSQ bytes could not be decoded; the message says why and what to do."""


class WsqUnavailableError(WsqDecodeError):
    """The decoder process could not be started: a fault of the installation, not the file."""


@dataclass(frozen=True)
class WsqPixels:
    """A decoded WSQ image: ``width * height`` 8-bit grey pixels, row by row."""

    pixels: bytearray
    width: int
    height: int


def read_wsq_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the WSQ frame header, read without decoding anything."""
    if data[:2] != _SOI:
        raise WsqDecodeError("not a WSQ file (no start-of-image marker)")
    pos = 2
    while pos + 2 <= len(data):
        marker = data[pos:pos + 2]
        if marker == _SOF:
            if pos + 10 > len(data):
                raise WsqDecodeError(f"the WSQ frame header is cut short; {_CORRUPT}")
            height, width = struct.unpack_from(">HH", data, pos + 6)
            if width == 0 or height == 0:
                raise WsqDecodeError(f"the WSQ header declares an empty image; {_CORRUPT}")
            return width, height
        if marker == _SOI:
            pos += 2
        elif marker in _SEGMENTS and pos + 4 <= len(data):
            length = struct.unpack_from(">H", data, pos + 2)[0]
            if length < 2:
                raise WsqDecodeError(f"a WSQ segment has length {length}; {_CORRUPT}")
            pos += 2 + length
        elif marker == _EOI:
            break
        else:
            raise WsqDecodeError(f"unknown or cut-short WSQ marker at byte {pos}; {_CORRUPT}")
    raise WsqDecodeError(f"the WSQ file has no frame header (marker FFA2); {_CORRUPT}")


def timeout_for(width: int, height: int) -> float:
    """Seconds one decode of a ``width`` x ``height`` WSQ image may take."""
    return BASE_TIMEOUT_S + TIMEOUT_S_PER_MPIXEL * width * height / 1e6


class _ChildGone(Exception):
    """The child closed its pipes or answered something that is not a reply."""

    def __init__(self, reason: str, *, closed: bool = False) -> None:
        super().__init__(reason)
        self.closed = closed


class _TimedOut(Exception):
    pass


class WsqDecoderProcess:
    """One child process that decodes WSQ; restarted after a crash, closed by ``close``.

    ``argv`` is the child's command line; the default runs this module with the current
    interpreter.
    """

    def __init__(self, argv: Sequence[str] | None = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self._argv = list(argv) if argv is not None else [
            sys.executable, "-P", os.path.abspath(__file__)]
        self._startup_timeout_s = startup_timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        _LIVE.add(self)

    @property
    def pid(self) -> int | None:
        """The current child's process id, None when no child is running."""
        return self._proc.pid if self._proc is not None else None

    def decode(self, data: bytes, timeout_s: float | None = None) -> WsqPixels:
        """Decode WSQ ``data`` in the child; any failure is a :class:`WsqDecodeError`."""
        width, height = read_wsq_size(data)
        timeout_s = timeout_for(width, height) if timeout_s is None else timeout_s
        alarm_s = min(math.ceil(timeout_s) + 2, 1 << 30)
        request = _REQUEST.pack(_REQUEST_MAGIC, alarm_s, len(data))
        with self._lock:
            proc = self._running_child()
            try:
                status, got_w, got_h, payload = self._exchange(
                    proc, (request, data), timeout_s, (_OK, _FAILED), (width, height))
            except _TimedOut:
                self._discard()
                raise WsqDecodeError(
                    f"the WSQ decoder did not finish within {timeout_s:.3g} s on this file; "
                    f"{_CORRUPT} (or the machine is overloaded)") from None
            except _ChildGone as gone:
                # A closed pipe means the child is dying: let it finish so we can say how.
                how = self._discard(grace_s=1.0 if gone.closed else 0.0)
                raise WsqDecodeError(
                    f"the WSQ decoder crashed on this file ({how or gone}); {_CORRUPT}"
                ) from None
            except BaseException:
                # An interrupt mid-exchange leaves the pipes out of step: start afresh.
                self._discard()
                raise
        if status == _FAILED:
            message = payload.decode("utf-8", "replace")
            raise WsqDecodeError(f"the WSQ data is corrupt ({message}); "
                                 "re-export it from the scanner software")
        return WsqPixels(payload, got_w, got_h)

    def close(self) -> None:
        """Stop the child (it exits when its input closes); idempotent."""
        with self._lock:
            self._stop(kill=False)

    def __enter__(self) -> WsqDecoderProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the child's life -------------------------------------------------------------
    def _running_child(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is not None:
            self._stop(kill=True)  # died between calls (killed from outside): replace it
        if self._proc is None:
            self._proc = self._start()
        return self._proc

    def _start(self) -> subprocess.Popen:
        try:
            # A session of its own: Ctrl-C in a terminal is for the parent to handle.
            proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, bufsize=0,
                                    start_new_session=True)
        except OSError as exc:
            raise WsqUnavailableError(
                f"WSQ decoding is unavailable: cannot start the decoder process ({exc})"
            ) from None
        self._proc = proc
        try:
            status, _, _, payload = self._exchange(proc, (), self._startup_timeout_s,
                                                   (_READY, _FAILED))
        except (_TimedOut, _ChildGone) as exc:
            how = self._discard(grace_s=1.0) or str(exc) or "no answer"
            raise WsqUnavailableError(
                f"WSQ decoding is unavailable: the decoder process did not start ({how})"
            ) from None
        except BaseException:
            self._discard()
            raise
        if status != _READY:
            self._discard()
            raise WsqUnavailableError(
                "WSQ decoding is unavailable: "
                f"{payload.decode('utf-8', 'replace')}; install the 'wsq' package") from None
        return proc

    def _discard(self, grace_s: float = 0.0) -> str:
        """Kill and reap the child, after ``grace_s`` for it to end by itself; says how
        it ended when it did, for the error message."""
        proc = self._proc
        if proc is None:
            return ""
        try:
            code = proc.wait(timeout=grace_s) if grace_s else proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        self._stop(kill=True)
        if code is None:
            return ""
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _close_pipes(proc)
        if kill and proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- one round trip -------------------------------------------------------------------
    def _exchange(self, proc: subprocess.Popen, request: tuple[bytes, ...],
                  timeout_s: float, statuses: tuple[int, ...],
                  expect: tuple[int, int] | None = None
                  ) -> tuple[int, int, int, bytearray]:
        deadline = time.monotonic() + timeout_s
        out_fd, in_fd = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(out_fd, False)
        os.set_blocking(in_fd, False)
        with selectors.DefaultSelector() as selector:
            for part in request:
                _write_all(selector, out_fd, part, deadline)
            head = _read_exactly(selector, in_fd, _REPLY.size, deadline)
            magic, status, width, height, length = _REPLY.unpack(head)
            if magic != _REPLY_MAGIC or status not in statuses:
                raise _ChildGone("it answered garbage")
            if status == _OK:
                # Pixels must be exactly what the header declared: anything else is garbage.
                if expect is None or (width, height) != expect or length != width * height:
                    raise _ChildGone("it answered garbage")
            elif length > _MAX_MESSAGE:
                raise _ChildGone("it answered garbage")
            payload = _read_exactly(selector, in_fd, length, deadline)
        return status, width, height, payload


def _close_pipes(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            pipe.close()


def _write_all(selector: selectors.BaseSelector, fd: int, data: bytes,
               deadline: float) -> None:
    view = memoryview(data)
    selector.register(fd, selectors.EVENT_WRITE)
    try:
        while view:
            _wait(selector, deadline)
            try:
                view = view[os.write(fd, view[:1 << 16]):]
            except BlockingIOError:
                continue
            except OSError:  # BrokenPipeError: the child is gone
                raise _ChildGone("it closed its input", closed=True) from None
    finally:
        selector.unregister(fd)


def _read_exactly(selector: selectors.BaseSelector, fd: int, size: int,
                  deadline: float) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    selector.register(fd, selectors.EVENT_READ)
    try:
        while got < size:
            _wait(selector, deadline)
            try:
                n = os.readv(fd, [view[got:]])
            except BlockingIOError:
                continue
            if n == 0:
                raise _ChildGone("it closed its output", closed=True)
            got += n
    finally:
        selector.unregister(fd)
    return buffer


def _wait(selector: selectors.BaseSelector, deadline: float) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TimedOut
        if selector.select(remaining):
            return


# -- the shared child -------------------------------------------------------------------------
_LIVE: weakref.WeakSet[WsqDecoderProcess] = weakref.WeakSet()
_shared_lock = threading.Lock()
_shared: WsqDecoderProcess | None = None


def shared_decoder() -> WsqDecoderProcess:
    """This process's shared decoder (its child starts on the first decode)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = WsqDecoderProcess()
        return _shared


def decode_wsq(data: bytes, timeout_s: float | None = None) -> WsqPixels:
    """Decode WSQ ``data`` in the shared decoder's child; see :meth:`WsqDecoderProcess.decode`."""
    return shared_decoder().decode(data, timeout_s)


def _close_all() -> None:
    for decoder in list(_LIVE):
        decoder.close()


def _forget_after_fork() -> None:
    # The forked process must not talk to its parent's child over shared pipes, and a
    # lock held by another thread at fork time would never be released here.
    global _shared, _shared_lock
    for decoder in list(_LIVE):
        decoder._lock = threading.Lock()
        proc, decoder._proc = decoder._proc, None
        if proc is not None:
            _close_pipes(proc)
    _shared, _shared_lock = None, threading.Lock()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)


# -- the child's side -------------------------------------------------------------------------
def _serve() -> None:
    """The child: read requests on stdin, answer on the original stdout, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies go to a private copy of stdout; anything the C code prints goes to stderr.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_LIMIT, CHILD_MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):
        pass  # not on this platform, or a tighter limit is already set
    try:
        import io

        import wsq  # noqa: F401  (registers the WSQ decoder with Pillow)
        from PIL import Image
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which says it)
        _reply(reply_fd, _FAILED, 0, 0, f"cannot import the wsq plugin: {exc}".encode())
        return
    _reply(reply_fd, _READY, 0, 0, b"")
    while True:
        head = _read_blocking(0, _REQUEST.size)
        if head is None:
            return
        magic, alarm_s, length = _REQUEST.unpack(head)
        data = _read_blocking(0, length) if magic == _REQUEST_MAGIC else None
        if data is None:
            return
        # If the parent died while the decoder hangs, no one would kill this process:
        # the default action of SIGALRM ends it.
        signal.alarm(alarm_s)
        try:
            with Image.open(io.BytesIO(data), formats=["WSQ"]) as im:
                im.load()
                gray = im if im.mode == "L" else im.convert("L")
                status, width, height, payload = _OK, gray.width, gray.height, gray.tobytes()
        except Exception as exc:  # noqa: BLE001  (the plugin raises bare Exception too)
            message = f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE]
            status, width, height, payload = _FAILED, 0, 0, message.encode("utf-8", "replace")
        signal.alarm(0)
        _reply(reply_fd, status, width, height, payload)


def _reply(fd: int, status: int, width: int, height: int, payload: bytes) -> None:
    data = _REPLY.pack(_REPLY_MAGIC, status, width, height, len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_blocking(fd: int, size: int) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    _serve()

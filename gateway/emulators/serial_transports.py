"""Serve a byte-level emulator where real driver code can open it like hardware.

:func:`serve_pty` gives a pseudo-terminal path (opened like ``/dev/ttyUSB0``) and
:func:`serve_socket` a ``socket://127.0.0.1:PORT`` URL; both run one daemon thread that
passes the host's bytes to ``emulator.feed`` and writes the answer back. With
``realtime=True`` the answer is paced at the emulator's baud rate (10 bits a byte), so
a demo shows the real upload time. When the emulator asks for an unplug (its UNPLUG
fault), the transport drops the link: the TCP connection is closed, or the pty is torn
down and a fresh one appears at a new path (``handle.url`` is updated first), as a USB
adapter re-enumerates when it is plugged back in. :func:`run_emulator` is the blocking
entry point behind ``ink-gateway emulate zfm``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import numpy as np

_POLL_SECONDS = 0.05
# Realtime pacing writes this many bytes at a time, then waits for the wire to catch up.
_PACE_CHUNK = 64


class ByteEmulator(Protocol):
    """What a transport needs from an emulator."""

    baud: int
    unplug_requested: bool

    def feed(self, data: bytes) -> bytes: ...

    def reset_link(self) -> None: ...


class EmulatorServer:
    """A running transport: ``url`` to open, ``close()`` to stop; a context manager."""

    url: str

    def __init__(self, emulator: ByteEmulator, *, realtime: bool) -> None:
        self.emulator = emulator
        self.realtime = realtime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"{type(self).__name__}")

    def close(self) -> None:
        """Stop serving and release the pty or socket; safe to call twice."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _serve(self) -> None:
        raise NotImplementedError

    def _send(self, data: bytes, write: Callable[[bytes], None]) -> None:
        """Write an answer, paced at the emulator's baud rate when realtime."""
        if not self.realtime:
            write(data)
            return
        started = time.monotonic()
        seconds_per_byte = 10.0 / self.emulator.baud
        for offset in range(0, len(data), _PACE_CHUNK):
            if self._stop.is_set():
                return
            chunk = data[offset:offset + _PACE_CHUNK]
            write(chunk)
            due = started + (offset + len(chunk)) * seconds_per_byte
            self._stop.wait(max(0.0, due - time.monotonic()))


# termios speed constants -> baud; rates without a constant (28800 ...) read as BOTHER.
_TERMIOS_BAUDS = {getattr(termios, f"B{rate}"): rate
                  for rate in (9600, 19200, 38400, 57600, 115200)}


class PtyServer(EmulatorServer):
    """An emulator behind a pseudo-terminal; ``url`` is the slave device path.

    With ``enforce_baud`` the module only understands a host whose port is set to the
    module's baud rate (a pty master sees the slave's termios), as a real UART at the
    wrong rate reads only framing errors; so baud switching is tested for real.
    """

    def __init__(
        self, emulator: ByteEmulator, *, realtime: bool = False, enforce_baud: bool = True
    ) -> None:
        super().__init__(emulator, realtime=realtime)
        self.enforce_baud = enforce_baud
        self._master, self._slave = self._open_pair()
        self._thread.start()

    def _open_pair(self) -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        # Keeping our own slave fd open stops the master reading EIO while no host is
        # connected, and keeps the path valid between a host's close and reopen.
        self.url = os.ttyname(slave)
        return master, slave

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self._master], [], [], _POLL_SECONDS)
                if not readable:
                    continue
                try:
                    data = os.read(self._master, 4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
                if self.enforce_baud and not self._host_baud_matches():
                    continue
                answer = self.emulator.feed(data)
                if answer:
                    self._send(answer, self._write)
                if self.emulator.unplug_requested:
                    self._replug()
        finally:
            for fd in (self._master, self._slave):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _host_baud_matches(self) -> bool:
        try:
            speed = termios.tcgetattr(self._master)[5]
        except termios.error:
            return True
        rate = _TERMIOS_BAUDS.get(speed)
        return rate is None or rate == self.emulator.baud

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stop.is_set():
            _, writable, _ = select.select([], [self._master], [], _POLL_SECONDS)
            if not writable:
                continue
            try:
                view = view[os.write(self._master, view):]
            except (BlockingIOError, InterruptedError):
                continue

    def _replug(self) -> None:
        # The new path is published before the old pty dies, so a host that sees the
        # disconnect and reopens handle.url always finds the new device.
        old_master, old_slave = self._master, self._slave
        self._master, self._slave = self._open_pair()
        self.emulator.reset_link()
        for fd in (old_master, old_slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class SocketServer(EmulatorServer):
    """An emulator behind a TCP port, one host connection at a time."""

    def __init__(
        self,
        emulator: ByteEmulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        realtime: bool = False,
    ) -> None:
        super().__init__(emulator, realtime=realtime)
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(_POLL_SECONDS)
        bound_host, bound_port = self._listener.getsockname()[:2]
        self.url = f"socket://{bound_host}:{bound_port}"
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    connection, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                with connection:
                    self.emulator.reset_link()
                    self._serve_connection(connection)
        finally:
            self._listener.close()

    def _serve_connection(self, connection: socket.socket) -> None:
        connection.settimeout(_POLL_SECONDS)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not self._stop.is_set():
            try:
                data = connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            answer = self.emulator.feed(data)
            try:
                if answer:
                    self._send(answer, self._sendall(connection))
            except OSError:
                return
            if self.emulator.unplug_requested:
                self.emulator.reset_link()
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                return

    def _sendall(self, connection: socket.socket) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            # sendall with a short timeout could give up part way; loop on timeouts.
            view = memoryview(data)
            while view and not self._stop.is_set():
                try:
                    view = view[connection.send(view):]
                except TimeoutError:
                    continue
        return write


def serve_pty(
    emulator: ByteEmulator, *, realtime: bool = False, enforce_baud: bool = True
) -> PtyServer:
    """Serve ``emulator`` on a new pseudo-terminal; open ``handle.url`` as a serial port."""
    return PtyServer(emulator, realtime=realtime, enforce_baud=enforce_baud)


def serve_socket(
    emulator: ByteEmulator,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    realtime: bool = False,
) -> SocketServer:
    """Serve ``emulator`` on TCP; ``handle.url`` is ``socket://HOST:PORT``."""
    return SocketServer(emulator, host, port, realtime=realtime)


def run_emulator(
    images: str | Path | Sequence[np.ndarray],
    *,
    kind: str = "zfm",
    model: str | None = None,
    socket_address: str | None = None,
    faults: Iterable[str] = (),
    packet_size: int = 128,
    baud: int | None = None,
    source_ppi: float | None = 500.0,
    finger_after_polls: int = 3,
    realtime: bool = True,
    out: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Serve an emulated serial fingerprint module until Ctrl-C (or ``stop`` is set).

    ``kind`` is "zfm" (ZFM/R30x/R503/AS608) or "gt521" (GT-521F32/F52).
    ``socket_address`` is ``HOST:PORT`` for TCP; without it a pty is created. Prints the
    device URL a person passes to the gateway. ``realtime`` paces the bytes at the
    module's baud rate so the upload takes as long as on a real cable.
    """
    emulator: ByteEmulator
    if kind == "zfm":
        from gateway.emulators.zfm import ZfmEmulator

        model = model or "R307"
        emulator = ZfmEmulator(images, model=model, packet_size=packet_size,
                               baud=baud or 57600, source_ppi=source_ppi,
                               finger_after_polls=finger_after_polls, faults=faults)
    elif kind == "gt521":
        from gateway.emulators.gt521 import Gt521Emulator

        model = model or "GT-521F52"
        emulator = Gt521Emulator(images, model=model, baud=baud or 9600,
                                 source_ppi=source_ppi,
                                 finger_after_polls=finger_after_polls, faults=faults)
    else:
        raise ValueError(f"no emulator for {kind!r}: use zfm or gt521")
    server: EmulatorServer
    if socket_address:
        host, _, port = socket_address.rpartition(":")
        server = serve_socket(emulator, host or "127.0.0.1", int(port), realtime=realtime)
    else:
        server = serve_pty(emulator, realtime=realtime)
    source = images if isinstance(images, str | Path) else f"{len(images)} images"
    with server:
        out(f"Emulated {model} fingerprint module serving {source}")
        out(f"Device URL: {kind}:{server.url}")
        if isinstance(server, PtyServer):
            out("(if the module is unplugged by a fault, the pty path changes; "
                "the new one is printed)")
        out("Press Ctrl-C to stop.")
        waiter = stop or threading.Event()
        last_url = server.url
        try:
            while not waiter.wait(0.5):
                if server.url != last_url:
                    last_url = server.url
                    out(f"Module replugged; new device URL: {kind}:{last_url}")
        except KeyboardInterrupt:
            out("Stopped.")


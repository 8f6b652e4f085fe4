"""Driver for ZFM / R30x / R503 / AS608 fingerprint modules on a serial link.

Opens the port with ``serial.serial_for_url`` (a device path, a pty, ``socket://`` ...),
handshakes (VfyPwd, ReadSysPara, ReadProdInfo where the module has it) to learn the
packet size, baud rate and image geometry, optionally moves the link to 115200 baud, and
captures by polling GenImg and reading UpImage's data packets. Every read has a per-packet
deadline and the upload an overall one, so nothing waits forever; every failure becomes
a :class:`~gateway.devices.base.DeviceError` with a message for the officer, and the
link is cleaned up so that the next capture can succeed.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

import serial

from gateway.devices.base import (
    Device,
    DeviceDisconnected,
    DeviceError,
    DeviceInfo,
    DeviceTimeout,
    NoFinger,
    ProtocolError,
    Scan,
)
from gateway.devices.serial_port import handshake_at_some_baud, open_serial
from gateway.devices.zfm_protocol import (
    BAUD_STEP,
    DEFAULT_ADDRESS,
    DEFAULT_MODEL,
    MAX_BAUD_MULTIPLIER,
    Confirmation,
    FrameError,
    FrameParser,
    Instruction,
    ModelSpec,
    Packet,
    Pid,
    ProductInfo,
    SysParam,
    SystemParameters,
    confirmation_text,
    encode_command,
    model_spec,
    officer_message,
    unpack_image,
)

FAST_BAUD = MAX_BAUD_MULTIPLIER * BAUD_STEP
# Baud rates tried, in order, when a real serial module does not answer at the one
# asked for: a module keeps a SetSysPara baud change across power cycles.
_FALLBACK_BAUDS = (57600, 115200, 9600, 19200, 38400)
# Reads block at most this long, so deadlines are checked often.
_READ_SLICE = 0.05
# Codes after which the same request cannot succeed until a person changes a setting.
_CONFIGURATION_CODES = frozenset({
    Confirmation.WRONG_PASSWORD, Confirmation.WRONG_ADDRESS, Confirmation.PASSWORD_REQUIRED,
    Confirmation.BAD_REGISTER, Confirmation.FLASH_ERROR,
})

SerialFactory = Callable[..., serial.SerialBase]


def _refusal(code: int, command: str) -> DeviceError:
    """The DeviceError for a module that answered ``code`` to ``command``."""
    detail = f"{command}: module answered 0x{code:02X} ({confirmation_text(code)})"
    message = officer_message(code)
    if code == Confirmation.NO_FINGER:
        return NoFinger(detail, officer_message=message)
    if code == Confirmation.RECEIVE_ERROR:
        return ProtocolError(detail, officer_message=message)
    return DeviceError(detail, officer_message=message,
                       retryable=code not in _CONFIGURATION_CODES)


class ZfmDevice(Device):
    """One ZFM-family module behind a serial URL.

    ``port_url`` is anything ``serial.serial_for_url`` opens. ``model`` is a hint for
    modules that cannot name themselves (only R503 answers ReadProdInfo); without it a
    module is taken as the 256 x 288 R30x family. ``fast_baud`` moves the link to
    115200 baud when the module runs slower. ``timeout`` bounds opening and the
    handshake; ``packet_timeout`` each reply or data packet; ``upload_timeout`` a whole
    image upload. ``poll_interval`` paces GenImg polling while waiting for a finger.
    """

    kind = "zfm"

    def __init__(
        self,
        port_url: str,
        *,
        baud: int = 57600,
        address: int = DEFAULT_ADDRESS,
        password: int = 0,
        model: str | None = None,
        fast_baud: bool = True,
        timeout: float = 5.0,
        packet_timeout: float = 1.0,
        upload_timeout: float = 15.0,
        poll_interval: float = 0.1,
        serial_factory: SerialFactory = serial.serial_for_url,
    ) -> None:
        self.port_url = port_url
        self.address = address
        self.password = password
        self.fast_baud = fast_baud
        self.open_timeout = timeout
        self.packet_timeout = packet_timeout
        self.upload_timeout = upload_timeout
        self.poll_interval = poll_interval
        self._model_hint = model_spec(model) if model else None
        self._serial_factory = serial_factory
        self._parser = FrameParser()
        self._port: serial.SerialBase | None = None
        self.baud = baud
        self.system: SystemParameters | None = None
        self.product: ProductInfo | None = None
        self.spec: ModelSpec = self._model_hint or model_spec(DEFAULT_MODEL)
        self.info = DeviceInfo(self.kind, self.spec.name, self._url())
        self._connect()

    # -- public ---------------------------------------------------------------------------
    def capture(
        self,
        *,
        timeout: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Scan:
        """Wait up to ``timeout`` s for a finger (polling GenImg), then upload its image."""
        if self._port is None:
            # The link dropped on an earlier capture: a replugged cable reappears at
            # the same path, so try once to reconnect rather than fail for ever.
            self._connect()
        deadline = time.monotonic() + timeout
        while True:
            code = self._command(Instruction.GEN_IMG).code
            if code == Confirmation.OK:
                break
            if code != Confirmation.NO_FINGER:
                raise _refusal(code, "GenImg")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoFinger(f"no finger within {timeout:.1f} s")
            # Pacing only: correctness never depends on this wait.
            time.sleep(min(self.poll_interval, remaining))
        started = time.monotonic()
        data = self._upload_image(progress)
        upload_seconds = time.monotonic() - started
        try:
            image = unpack_image(data, self.spec.width, self.spec.height)
        except ValueError as error:
            raise ProtocolError(str(error)) from error
        return Scan(image, self.spec.ppi, self.info, upload_seconds)

    def close(self) -> None:
        """Close the serial port; safe to call more than once."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()

    def command(self, instruction: int, params: bytes = b"") -> Packet:
        """Send one command and return the module's ack (for tools and diagnostics)."""
        return self._command(instruction, params)

    # -- connection and handshake ----------------------------------------------------
    def _url(self) -> str:
        options: dict[str, str] = {}
        if self.baud != 57600:
            options["baud"] = str(self.baud)
        if self.address != DEFAULT_ADDRESS:
            options["address"] = f"{self.address:08X}"
        # The password is left out on purpose: DeviceInfo.url ends up in logs.
        suffix = ("&" if "?" in self.port_url else "?") + urlencode(options) if options else ""
        return f"zfm:{self.port_url}{suffix}"

    def _open_port(self, baud: int) -> None:
        self.close()
        self._port = open_serial(self._serial_factory, self.port_url, baud,
                                 read_timeout=_READ_SLICE, write_timeout=self.packet_timeout)
        self.baud = baud
        self._parser.clear()

    def _connect(self) -> None:
        try:
            handshake_at_some_baud(self.port_url, self.baud, _FALLBACK_BAUDS,
                                   self.open_timeout, self._open_port, self._verify_password)
            self._read_parameters()
            if self.fast_baud and self.baud < FAST_BAUD:
                self._switch_to_fast_baud()
        except DeviceError:
            self.close()
            raise
        self.info = DeviceInfo(
            self.kind, self.spec.name, self._url(),
            self.product.serial_number if self.product else None,
            self._details(),
        )

    def _verify_password(self) -> None:
        code = self._command(Instruction.VFY_PWD, struct.pack(">I", self.password)).code
        if code != Confirmation.OK:
            raise _refusal(code, "VfyPwd")

    def _read_parameters(self) -> None:
        ack = self._command(Instruction.READ_SYS_PARA)
        if ack.code != Confirmation.OK:
            raise _refusal(ack.code, "ReadSysPara")
        try:
            self.system = SystemParameters.from_payload(ack.payload[1:])
        except ValueError as error:
            raise ProtocolError(f"ReadSysPara: {error}") from error
        self.product = None
        if self._model_hint is None or self._model_hint.name == "R503":
            self.product = self._read_product_info()
        self.spec = self._geometry()

    def _read_product_info(self) -> ProductInfo | None:
        # Only R503-class modules know ReadProdInfo; others answer 0x01 or stay silent.
        try:
            ack = self._command(Instruction.READ_PROD_INFO)
        except (DeviceTimeout, ProtocolError):
            return None
        if ack.code != Confirmation.OK:
            return None
        try:
            return ProductInfo.from_payload(ack.payload[1:])
        except ValueError:
            return None

    def _geometry(self) -> ModelSpec:
        base = self._model_hint or model_spec(DEFAULT_MODEL)
        product = self.product
        if product is None:
            return base
        with contextlib.suppress(ValueError):
            base = model_spec(product.model)
        width, height = product.width, product.height
        if not (0 < width <= 1024 and 0 < height <= 1024 and width % 2 == 0):
            return base
        name = product.model or base.name
        return ModelSpec(name, width, height, base.ppi, product.database_size or base.capacity)

    def _switch_to_fast_baud(self) -> None:
        old_baud = self.baud
        ack = self._command(Instruction.SET_SYS_PARA,
                            bytes([SysParam.BAUD, MAX_BAUD_MULTIPLIER]))
        if ack.code != Confirmation.OK:
            return  # the module keeps its rate; slower but working
        self._open_port(FAST_BAUD)
        try:
            self._verify_password()
            self._read_parameters()
        except (DeviceTimeout, ProtocolError):
            # The module (or the USB-UART bridge) did not follow: go back.
            self._open_port(old_baud)
            self._verify_password()
            self._read_parameters()

    def _details(self) -> dict[str, object]:
        details: dict[str, object] = {
            "baud": self.baud,
            "width": self.spec.width,
            "height": self.spec.height,
            "address": f"{self.address:08X}",
        }
        if self.system is not None:
            details.update(packet_size=self.system.packet_size, capacity=self.system.capacity,
                           system_id=self.system.system_id,
                           security_level=self.system.security_level,
                           module_baud=self.system.baud)
        if self.product is not None:
            details.update(hardware_version=self.product.hardware_version,
                           sensor=self.product.sensor)
        return details

    # -- framing over the port ----------------------------------------------------------
    def _link_lost(self, error: Exception) -> DeviceDisconnected:
        self.close()
        return DeviceDisconnected(f"serial link to {self.port_url} lost: {error}")

    def _command(self, instruction: int, params: bytes = b"") -> Packet:
        """Send a command; return its ack, skipping stale data packets."""
        port = self._require_port()
        try:
            # Half duplex: anything waiting now is left over from an aborted exchange.
            port.reset_input_buffer()
            self._parser.clear()
            port.write(encode_command(instruction, params, self.address))
        except (serial.SerialException, OSError) as error:
            raise self._link_lost(error) from error
        deadline = time.monotonic() + self.packet_timeout
        name = _instruction_name(instruction)
        corrupt: FrameError | None = None
        while True:
            try:
                packet = self._read_packet(deadline, name)
            except FrameError as error:
                corrupt = error
                continue
            except DeviceTimeout:
                if corrupt is not None:
                    raise ProtocolError(f"{name}: {corrupt}") from corrupt
                raise
            if packet.pid == Pid.ACK:
                self._check_address(packet, name)
                if not packet.payload:
                    raise ProtocolError(f"{name}: empty ack")
                return packet

    def _read_packet(self, deadline: float, what: str) -> Packet:
        """The next frame before ``deadline``; FrameError passes through."""
        parser = self._parser
        while True:
            packet = parser.next_packet()
            if packet is not None:
                return packet
            if time.monotonic() >= deadline:
                if parser.buffered:
                    raise ProtocolError(f"{what}: truncated packet, {parser.buffered} bytes "
                                        "then silence")
                raise DeviceTimeout(f"{what}: no answer within {self.packet_timeout:.1f} s")
            port = self._require_port()
            try:
                parser.feed(port.read(parser.wanted()))
            except (serial.SerialException, OSError) as error:
                raise self._link_lost(error) from error

    def _check_address(self, packet: Packet, what: str) -> None:
        if packet.address != self.address:
            raise ProtocolError(
                f"{what}: reply from address {packet.address:08X}, expected {self.address:08X}"
            )

    def _require_port(self) -> serial.SerialBase:
        if self._port is None:
            raise DeviceDisconnected(f"{self.port_url} is closed")
        return self._port

    def _upload_image(self, progress: Callable[[int, int], None] | None) -> bytes:
        ack = self._command(Instruction.UP_IMAGE)
        if ack.code != Confirmation.OK:
            raise _refusal(ack.code, "UpImage")
        total = self.spec.width * self.spec.height // 2
        data = bytearray()
        # 10 bits a byte plus 11 framing bytes a packet: at 9600 baud a 256 x 288 image
        # needs 42 s, so the overall limit grows with the time the wire itself needs.
        packet_size = self.system.packet_size if self.system else 128
        wire_bytes = total + 11 * -(-total // packet_size)
        overall = time.monotonic() + max(self.upload_timeout, 2.0 * wire_bytes * 10 / self.baud)
        try:
            while True:
                deadline = min(time.monotonic() + self.packet_timeout, overall)
                try:
                    packet = self._read_packet(deadline, "UpImage")
                except DeviceTimeout as error:
                    raise DeviceTimeout(
                        f"UpImage: module went silent after {len(data)} of {total} bytes",
                        officer_message="The scanner stopped sending the image: "
                                        "try the scan again",
                    ) from error
                self._check_address(packet, "UpImage")
                if packet.pid not in (Pid.DATA, Pid.END):
                    raise ProtocolError(f"UpImage: unexpected PID 0x{packet.pid:02X}")
                data += packet.payload
                if len(data) > total:
                    raise ProtocolError(f"UpImage: more than the {total} bytes of the image")
                if progress is not None:
                    progress(len(data), total)
                if packet.pid == Pid.END:
                    break
        except FrameError as error:
            self._drain_upload(overall)
            raise ProtocolError(f"UpImage: {error}") from error
        except ProtocolError:
            self._drain_upload(overall)
            raise
        if len(data) != total:
            raise ProtocolError(f"UpImage: got {len(data)} bytes, the image has {total}")
        return bytes(data)

    def _drain_upload(self, overall: float) -> None:
        """Read and drop the rest of an aborted upload, up to its end packet."""
        while True:
            deadline = min(time.monotonic() + self.packet_timeout, overall)
            try:
                packet = self._read_packet(deadline, "UpImage")
            except FrameError:
                continue
            except (DeviceTimeout, ProtocolError):
                return
            if packet.pid == Pid.END:
                return


def _instruction_name(instruction: int) -> str:
    try:
        return Instruction(instruction).name
    except ValueError:
        return f"instruction 0x{instruction:02X}"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def open_zfm(target: str, *, timeout: float = 5.0) -> ZfmDevice:
    """Open ``target`` = ``<pyserial url or path>[?baud=&address=&password=&model=&fast=]``.

    ``address`` is hex (``FFFFFFFF``), ``password`` decimal or ``0x`` hex, ``fast=0``
    keeps the module's baud rate. Other query keys stay on the URL for pyserial.
    """
    base, _, query = target.partition("?")
    options: dict[str, object] = {"timeout": timeout}
    passthrough: list[tuple[str, str]] = []
    try:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "baud":
                options["baud"] = int(value)
            elif key == "address":
                options["address"] = int(value, 16)
            elif key == "password":
                options["password"] = int(value, 0)
            elif key == "model":
                options["model"] = value
            elif key == "fast":
                if value.lower() not in _TRUE | _FALSE:
                    raise ValueError(f"fast must be 0 or 1, not {value!r}")
                options["fast_baud"] = value.lower() in _TRUE
            else:
                passthrough.append((key, value))
        if passthrough and "://" not in base:
            raise ValueError(f"unknown option(s) {', '.join(k for k, _ in passthrough)}")
        if "model" in options:
            model_spec(str(options["model"]))
    except ValueError as error:
        raise DeviceError(
            f"bad ZFM device URL {target!r}: {error}",
            officer_message="The scanner setting is wrong: check the device URL",
            retryable=False,
        ) from error
    port_url = base + ("?" + urlencode(passthrough) if passthrough else "")
    return ZfmDevice(port_url, **options)  # type: ignore[arg-type]

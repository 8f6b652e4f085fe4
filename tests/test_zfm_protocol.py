"""ZFM framing, codes and the emulator's byte-level answers, against golden frames.

The hex frames are those of devices-and-formats.md section 1.3, which were checked
against pyfingerprint's parser.
"""

from __future__ import annotations

import numpy as np
import pytest

from gateway.devices.zfm_protocol import (
    Confirmation,
    FrameError,
    FrameParser,
    Instruction,
    Packet,
    Pid,
    ProductInfo,
    SystemParameters,
    checksum,
    encode_ack,
    encode_command,
    encode_packet,
    officer_message,
    pack_image,
    unpack_image,
)
from gateway.emulators.zfm import STRAY_BYTES, Fault, ZfmEmulator, fit_image

GOLDEN_COMMANDS = {
    "EF 01 FF FF FF FF 01 00 07 13 00 00 00 00 00 1B": (Instruction.VFY_PWD, b"\0\0\0\0"),
    "EF 01 FF FF FF FF 01 00 03 01 00 05": (Instruction.GEN_IMG, b""),
    "EF 01 FF FF FF FF 01 00 04 02 01 00 08": (Instruction.IMG_2_TZ, b"\x01"),
    "EF 01 FF FF FF FF 01 00 03 0A 00 0E": (Instruction.UP_IMAGE, b""),
    "EF 01 FF FF FF FF 01 00 03 0F 00 13": (Instruction.READ_SYS_PARA, b""),
    "EF 01 FF FF FF FF 01 00 03 3C 00 40": (Instruction.READ_PROD_INFO, b""),
}
ACK_OK = bytes.fromhex("EF 01 FF FF FF FF 07 00 03 00 00 0A")
ACK_NO_FINGER = bytes.fromhex("EF 01 FF FF FF FF 07 00 03 02 00 0C")
SYS_PARA_REPLY = bytes.fromhex(
    "EF 01 FF FF FF FF 07 00 13 00 00 00 00 09 03 E8 00 03 FF FF FF FF 00 02 00 06 05 15"
)


def parse_all(data: bytes) -> list[Packet]:
    parser = FrameParser()
    parser.feed(data)
    packets = []
    while (packet := parser.next_packet()) is not None:
        packets.append(packet)
    return packets


@pytest.mark.parametrize("hex_frame", list(GOLDEN_COMMANDS))
def test_commands_encode_to_the_golden_frames(hex_frame: str) -> None:
    instruction, params = GOLDEN_COMMANDS[hex_frame]
    assert encode_command(instruction, params) == bytes.fromhex(hex_frame)


@pytest.mark.parametrize("hex_frame", list(GOLDEN_COMMANDS))
def test_golden_frames_parse_back(hex_frame: str) -> None:
    instruction, params = GOLDEN_COMMANDS[hex_frame]
    [packet] = parse_all(bytes.fromhex(hex_frame))
    assert packet == Packet(Pid.COMMAND, bytes([instruction]) + params, 0xFFFFFFFF)


def test_acks_match_the_golden_frames() -> None:
    assert encode_ack(Confirmation.OK) == ACK_OK
    assert encode_ack(Confirmation.NO_FINGER) == ACK_NO_FINGER
    assert [p.code for p in parse_all(ACK_OK + ACK_NO_FINGER)] == [0x00, 0x02]


def test_read_sys_para_reply_decodes() -> None:
    [packet] = parse_all(SYS_PARA_REPLY)
    params = SystemParameters.from_payload(packet.payload[1:])
    assert params == SystemParameters(status=0, system_id=9, capacity=1000, security_level=3,
                                      address=0xFFFFFFFF, packet_size=128, baud=57600)
    assert encode_ack(0, params.to_payload()) == SYS_PARA_REPLY


def test_checksum_is_masked_to_16_bits() -> None:
    payload = b"\xff" * 256
    assert checksum(Pid.DATA, payload) == (2 + 1 + 2 + 255 * 256) & 0xFFFF
    assert parse_all(encode_packet(Pid.DATA, payload))[0].payload == payload


def test_parser_resynchronises_after_stray_bytes() -> None:
    # A lone 0x55 (power-on) and junk with a false EF 01 header before a real ack.
    packets = parse_all(STRAY_BYTES + ACK_NO_FINGER + b"\x55" + ACK_OK)
    assert [p.code for p in packets] == [0x02, 0x00]


def test_parser_reads_by_length_across_arbitrary_chunks() -> None:
    stream = SYS_PARA_REPLY + ACK_OK
    parser = FrameParser()
    packets = []
    for byte in stream:
        assert parser.wanted() >= 1
        parser.feed(bytes([byte]))
        while (packet := parser.next_packet()) is not None:
            packets.append(packet)
    assert [len(p.payload) for p in packets] == [17, 1]


def test_parser_asks_for_the_rest_of_a_frame() -> None:
    parser = FrameParser()
    parser.feed(SYS_PARA_REPLY[:5])
    assert parser.wanted() == 4
    parser.feed(SYS_PARA_REPLY[5:12])
    assert parser.next_packet() is None
    assert parser.wanted() == len(SYS_PARA_REPLY) - 12


def test_bad_checksum_raises_and_the_stream_continues() -> None:
    corrupt = bytearray(ACK_OK)
    corrupt[-1] ^= 0xFF
    parser = FrameParser()
    parser.feed(bytes(corrupt) + ACK_NO_FINGER)
    with pytest.raises(FrameError, match="checksum"):
        parser.next_packet()
    packet = parser.next_packet()
    assert packet is not None and packet.code == Confirmation.NO_FINGER


def test_implausible_length_is_treated_as_junk() -> None:
    false_header = bytes.fromhex("EF 01 FF FF FF FF 07 FF FF")
    assert [p.code for p in parse_all(false_header + ACK_OK)] == [0]


def test_confirmation_codes_have_officer_messages() -> None:
    assert officer_message(0x02).startswith("No finger detected")
    assert "wipe" in officer_message(0x03)
    assert "0x42" in officer_message(0x42)


def test_pack_unpack_round_trip_high_nibble_is_left_pixel() -> None:
    image = np.array([[0x10, 0xF0, 0x00, 0x80]], dtype=np.uint8)
    assert pack_image(image) == bytes([0x1F, 0x08])
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (288, 256), dtype=np.uint8)
    assert np.array_equal(unpack_image(pack_image(image), 256, 288), (image >> 4) * 17)


def test_product_info_round_trip() -> None:
    info = ProductInfo("R503", "2024", "SN123456", 0x0100, "CAP192", 192, 192, 1536, 200)
    assert len(info.to_payload()) == 46
    assert ProductInfo.from_payload(info.to_payload()) == info


def test_fit_image_crops_and_pads_centred() -> None:
    image = np.zeros((300, 100), dtype=np.uint8)
    fitted = fit_image(image, 256, 288)
    assert fitted.shape == (288, 256)
    assert (fitted[:, 78:178] == 0).all() and (fitted[:, :78] == 255).all()
    assert fit_image(image, 256, 288, scale=0.5)[72:216, 103:153].max() == 0


# -- the emulator, driven byte for byte -------------------------------------------------
def acks(emulator: ZfmEmulator, frame: bytes) -> list[Packet]:
    return parse_all(emulator.feed(frame))


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (288, 256), dtype=np.uint8)


def test_emulator_answers_the_golden_handshake(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image])
    assert emulator.feed(encode_command(Instruction.VFY_PWD, b"\0\0\0\0")) == ACK_OK
    reply = emulator.feed(encode_command(Instruction.READ_SYS_PARA))
    assert reply[:9] == SYS_PARA_REPLY[:9]
    assert SystemParameters.from_payload(parse_all(reply)[0].payload[1:]).baud == 57600


@pytest.mark.parametrize("packet_size", [32, 64, 128, 256])
def test_emulator_uploads_in_packets_of_the_configured_size(
    image: np.ndarray, packet_size: int
) -> None:
    emulator = ZfmEmulator([image], packet_size=packet_size)
    assert acks(emulator, encode_command(Instruction.GEN_IMG))[0].code == 0
    packets = acks(emulator, encode_command(Instruction.UP_IMAGE))
    assert packets[0].pid == Pid.ACK and packets[0].code == 0
    data = packets[1:]
    assert len(data) == 256 * 288 // 2 // packet_size
    assert {p.pid for p in data[:-1]} == {Pid.DATA} and data[-1].pid == Pid.END
    assert {len(p.payload) for p in data} == {packet_size}
    pixels = unpack_image(b"".join(p.payload for p in data), 256, 288)
    assert np.array_equal(pixels, (image >> 4) * 17)


def test_emulator_finger_control(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image], finger_after_polls=2)
    codes = [acks(emulator, encode_command(Instruction.GEN_IMG))[0].code for _ in range(3)]
    assert codes == [2, 2, 0]
    emulator.lift_finger()
    assert acks(emulator, encode_command(Instruction.GEN_IMG))[0].code == 2
    emulator.place_finger()
    assert acks(emulator, encode_command(Instruction.GEN_IMG))[0].code == 0


def test_emulator_password_and_address(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image], password=1234, address=0x12345678)
    assert emulator.feed(encode_command(Instruction.GEN_IMG)) == b""  # not its address
    generate = encode_command(Instruction.GEN_IMG, address=0x12345678)
    assert acks(emulator, generate)[0].code == Confirmation.PASSWORD_REQUIRED
    wrong = encode_command(Instruction.VFY_PWD, b"\0\0\0\0", 0x12345678)
    assert acks(emulator, wrong)[0].code == Confirmation.WRONG_PASSWORD
    right = encode_command(Instruction.VFY_PWD, (1234).to_bytes(4, "big"), 0x12345678)
    [ack] = acks(emulator, right)
    assert ack.code == 0 and ack.address == 0x12345678
    assert acks(emulator, generate)[0].code == 0


def test_emulator_answers_a_corrupt_command_with_receive_error(image: np.ndarray) -> None:
    frame = bytearray(encode_command(Instruction.GEN_IMG))
    frame[-1] ^= 1
    assert acks(ZfmEmulator([image]), bytes(frame))[0].code == Confirmation.RECEIVE_ERROR


def test_emulator_r503_reports_its_geometry(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image], model="R503")
    [ack] = acks(emulator, encode_command(Instruction.READ_PROD_INFO))
    info = ProductInfo.from_payload(ack.payload[1:])
    assert (info.model, info.width, info.height) == ("R503", 192, 192)
    r307 = ZfmEmulator([image], model="R307")
    assert acks(r307, encode_command(Instruction.READ_PROD_INFO))[0].code == 0x01


def test_emulator_set_sys_para_changes_baud_and_packet_size(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image])
    assert acks(emulator, encode_command(Instruction.SET_SYS_PARA, b"\x04\x0c"))[0].code == 0
    assert acks(emulator, encode_command(Instruction.SET_SYS_PARA, b"\x06\x03"))[0].code == 0
    assert acks(emulator, encode_command(Instruction.SET_SYS_PARA, b"\x09\x01"))[0].code == 0x1A
    [ack] = acks(emulator, encode_command(Instruction.READ_SYS_PARA))
    params = SystemParameters.from_payload(ack.payload[1:])
    assert (params.baud, params.packet_size) == (115200, 256)


def test_emulator_faults_fire_once(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image], faults=[Fault.TIMEOUT, Fault.STRAY_BYTES])
    assert emulator.feed(encode_command(Instruction.GEN_IMG)) == b""
    reply = emulator.feed(encode_command(Instruction.GEN_IMG))
    assert reply.startswith(STRAY_BYTES) and parse_all(reply)[0].code == 0
    assert emulator.feed(encode_command(Instruction.GEN_IMG)) == ACK_OK
    assert emulator.pending_faults == []


def test_emulator_unplug_cuts_the_upload_and_flags_the_transport(image: np.ndarray) -> None:
    emulator = ZfmEmulator([image], faults=["unplug"])
    emulator.feed(encode_command(Instruction.GEN_IMG))
    reply = emulator.feed(encode_command(Instruction.UP_IMAGE))
    assert emulator.unplug_requested
    assert len(reply) < 256 * 288 // 2
    emulator.reset_link()
    assert not emulator.unplug_requested

"""The generated Python in protos/ is exactly what `python -m protos.generate` makes."""

from pathlib import Path

from protos.generate import ROOT, generate


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python -m protos.generate"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.relative_to(ROOT)} drifted from the .proto: "
            "run python -m protos.generate and commit the result"
        )


def test_generated_stub_imports_its_messages_by_package_path() -> None:
    from protos.ink.v1 import matcher_pb2, matcher_pb2_grpc

    assert matcher_pb2.DESCRIPTOR.package == "ink.v1"
    assert hasattr(matcher_pb2_grpc, "MatcherStub")

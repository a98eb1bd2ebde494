"""The golden vectors of docs/protocol.md, read from the document itself, on both backends."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

from qp2p import errors, wire

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def blocks(kind: str) -> list[dict[str, str]]:
    found = []
    for body in re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S):
        fields = dict(line.split(": ", 1) for line in body.strip().splitlines())
        found.append(fields)
    return found


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


VECTORS = blocks("vector")


def test_the_document_has_vectors() -> None:
    assert len(VECTORS) >= 20
    assert len({v["name"] for v in VECTORS}) == len(VECTORS)
    assert len(blocks("retry-vector")) == 1


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_frame_vector(vector: dict[str, str], framing: ModuleType) -> None:
    frame = unhex(vector["frame"])
    max_size = int(vector.get("max_size", framing.MAX_DATA_LEN))
    decoder = framing.FrameDecoder(max_size)
    decoder.feed(frame)
    if "error" in vector:
        error = getattr(errors, vector["error"])
        with pytest.raises(error):
            decoded = decoder.next_frame()
            decoder.finish()
            wire.decode(*decoded)
        return
    flag, body = decoder.next_frame()
    decoder.finish()
    expected = eval(vector["message"], vars(wire))  # the document's own notation for a message
    assert wire.decode(flag, body) == expected
    if vector.get("encode", "yes") == "yes":
        assert wire.encode(expected) == frame


def test_retry_token_vector(retry: ModuleType) -> None:
    (vector,) = blocks("retry-vector")
    host, port = vector["address"].split()
    tokens = retry.RetryTokens(unhex(vector["key"]))
    args = (
        (host, int(port)),
        unhex(vector["original_dcid"]),
        float(vector["now"]),
        unhex(vector["retry_scid"]),
    )
    assert tokens.mint(*args) == unhex(vector["token"])
    assert tokens.validate(unhex(vector["token"]), args[0], args[2], args[3]) == args[1]

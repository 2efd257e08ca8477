"""Stop sequences and incremental detokenization, on the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from genserve.server.text.detokenizer import ByteDetokenizer, IncrementalDetokenizer
from genserve.server.text.stop_sequences import StopSequenceMatcher


def feed_all(matcher: StopSequenceMatcher, pieces: list[str]) -> str:
    out = "".join(matcher.feed(p) for p in pieces)
    return out if matcher.matched else out + matcher.flush()


def test_stop_sequence_split_across_deltas_is_never_shown() -> None:
    matcher = StopSequenceMatcher(("END",))
    emitted = [matcher.feed(p) for p in ["Hello E", "N", "D tail"]]
    assert emitted == ["Hello ", "", ""]
    assert matcher.matched


def test_partial_stop_sequence_is_released_when_it_does_not_complete() -> None:
    matcher = StopSequenceMatcher(("END",))
    assert feed_all(matcher, ["Hello E", "ND", "ING"]) == "Hello "
    matcher = StopSequenceMatcher(("END",))
    assert feed_all(matcher, ["Hello E", "lse"]) == "Hello Else"


def test_earliest_of_several_stop_sequences_wins() -> None:
    matcher = StopSequenceMatcher(("world", "lo"))
    assert feed_all(matcher, ["hello world"]) == "hel"


def test_no_stop_sequences_passes_text_through() -> None:
    matcher = StopSequenceMatcher(())
    assert feed_all(matcher, ["a", "b"]) == "ab"


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from genserve.server.manifest import Modality, load_manifest, manifest_path

    spec = load_manifest(manifest_path("tiny")).spec_for(Modality.TEXT)
    assert spec is not None
    return AutoTokenizer.from_pretrained(
        spec.resolved_source(Path("unused")), gguf_file=spec.gguf_file
    )


@pytest.mark.parametrize(
    "text", ["FastAPI is great", "naïve café — 日本語 🎉 ok", "  spaces\n\nand lines"]
)
def test_incremental_detokenizer_reassembles_the_text(tokenizer, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push(i) for i in ids]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


def test_byte_pieces_hold_a_split_character_until_it_completes() -> None:
    pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9!"}  # "café!" with é split across tokens
    detokenizer = ByteDetokenizer(pieces.__getitem__)
    assert [detokenizer.push(t) for t in (1, 2, 3)] == ["caf", "", "é!"]
    assert detokenizer.flush() == ""


def test_a_character_cut_by_the_end_of_output_is_flushed_as_a_replacement() -> None:
    detokenizer = ByteDetokenizer({1: b"ok", 2: b"\xc3"}.__getitem__)
    assert detokenizer.push(1) + detokenizer.push(2) == "ok"
    assert detokenizer.flush() == "\ufffd"  # not silently dropped

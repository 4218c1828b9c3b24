"""Token-aware, structure-aware chunking for the RAG ingestion pipeline.

Pure Python (stdlib + ``tokenizers``): no Dagster, torch or transformers, so it is cheap to import and
to test.

How a document is cut
---------------------
The whole document is tokenized once (no special tokens) with the embedding model's own tokenizer, and
chunks are cut at token boundaries using the tokens' character offsets into the ORIGINAL text, so a
chunk's ``text`` is always ``document[start:end]`` (with surrounding whitespace stripped).

Greedily, from the start of the document, each chunk starting at token ``s``:

* takes the whole remainder if it fits in ``chunk_size`` tokens;
* otherwise cuts at the best-ranked boundary in the window ``(s + chunk_size // 2, s + chunk_size]``
  (latest one on ties), ranked: Markdown heading line start > paragraph break (blank line) >
  line break > sentence end (``.``, ``!``, ``?`` + whitespace; ``。！？``) > word boundary.
  A heading inside the window therefore always starts the next chunk (a section begins a new chunk
  once the current one is at least half full), and no cut ever falls inside a heading line or
  directly after one, so a heading is never left alone at the end of a chunk. ``#`` lines inside
  fenced code blocks are not headings;
* if the window holds no word boundary at all, it cuts at the latest word boundary before the window,
  then inside a heading line longer than a chunk, then after the latest punctuation character, and
  only then inside a word (one of more than ``chunk_size`` word pieces; note that BERT turns any
  word over 100 characters into a single [UNK] token);
* cuts at a line break / sentence end / word boundary fall inside a paragraph, so the next chunk starts
  ``chunk_overlap`` tokens earlier (never further back than the start of the current paragraph, never
  more than half of the current chunk), snapped forward to a sentence or line start if one lies in
  the first half of the overlap, else to a word start; cuts at headings and paragraph breaks get no
  overlap.

Every chunk is re-tokenized on its own; ``token_count`` is that count and is always <= ``chunk_size``
(a chunk that would exceed it is shrunk at the last word boundary, token by token as a last resort).
No chunk is empty; blank text, and text the tokenizer drops entirely (control characters), give [].
Characters the tokenizer drops between two chunks stay in the earlier one, so every non-whitespace
character of the document lies in some chunk.

Locality: a cut depends only on the text up to ``chunk_size`` tokens past the chunk's start, so an
edit leaves every chunk whose ``start + chunk_size`` token window ends before the edit unchanged, and
chunks after the edit are identical again (up to a shift of their character offsets) as soon as a cut
falls on the same heading or paragraph break as before.

Cost: time and memory are linear in the document's size. A token's offsets live in two compact
arrays (8 bytes a token) and a character position maps to a token by bisection. With a tokenizer whose
tokens never cross whitespace (BERT-like: see :func:`_sectionable`), a long text is tokenized in
sections of about ``_SECTION_CHARS`` characters, each cut just after a newline (else a space or tab):
this gives exactly the tokens of the whole text, while the tokenizer's own working memory (tens of
bytes a character) stays bounded whatever the document's size. Other tokenizers see whole documents.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter, le, lt
from pathlib import Path

import tokenizers

from ai_assets.lib.ingestion.text_formats import toggle_fence

# Bump whenever a change to this module can change the chunks produced for some input.
CHUNKER_VERSION = "1"

# Fixed namespace for chunk ids (uuid5). Never change it: every stored point id derives from it.
AI_ASSETS_NAMESPACE = uuid.UUID("6f1c2a9e-4b1d-5e57-9c3a-2d0f8e7b6a41")

# all-MiniLM-L6-v2: max_seq_length 256, minus [CLS] and [SEP].
DEFAULT_MAX_CONTENT_TOKENS = 254
MIN_CHUNK_SIZE = 16


@dataclass(frozen=True)
class ChunkingSettings:
    chunk_size: int = 200  # max content tokens per chunk (special tokens excluded)
    chunk_overlap: int = 32  # tokens repeated from the previous chunk when a cut falls inside a paragraph

    def validate(self, max_content_tokens: int) -> None:
        """Raise ValueError, naming the field and the value, if these settings are unusable with a
        model that reads at most ``max_content_tokens`` content tokens."""
        self._validate(max_content_tokens)

    def _validate(self, max_content_tokens: int | None) -> None:
        size, overlap = self.chunk_size, self.chunk_overlap
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"chunk_size must be an integer (got {size!r})")
        if not isinstance(overlap, int) or isinstance(overlap, bool):
            raise ValueError(f"chunk_overlap must be an integer (got {overlap!r})")
        if max_content_tokens is not None and max_content_tokens < MIN_CHUNK_SIZE:
            raise ValueError(f"max_content_tokens must be at least {MIN_CHUNK_SIZE} (got {max_content_tokens})")
        upper = max_content_tokens if max_content_tokens is not None else size
        if size < MIN_CHUNK_SIZE or size > upper:
            bound = (
                f"between {MIN_CHUNK_SIZE} and {max_content_tokens}"
                if max_content_tokens
                else (f"at least {MIN_CHUNK_SIZE}")
            )
            raise ValueError(f"chunk_size must be {bound} (got {size})")
        if overlap < 0 or overlap > size // 2:
            raise ValueError(f"chunk_overlap must be between 0 and chunk_size // 2 = {size // 2} (got {overlap})")

    def fingerprint(self) -> str:
        """Stable short hex digest of everything that determines the chunks (besides the tokenizer)."""
        payload = json.dumps(
            {"chunker_version": CHUNKER_VERSION, "chunk_size": self.chunk_size, "chunk_overlap": self.chunk_overlap},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Chunk:
    index: int  # 0-based position within the document
    text: str
    start: int  # character offsets into the document text: text == document[start:end]
    end: int
    token_count: int  # tokens the model sees for `text` alone (no special tokens); <= chunk_size
    chunk_hash: str  # sha256 hex of text


def load_tokenizer(tokenizer_json: str | Path) -> tokenizers.Tokenizer:
    """Load a ``tokenizer.json`` with truncation and padding disabled (the all-MiniLM-L6-v2 file ships
    with truncation at 128 and fixed padding, which would make every token count wrong)."""
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def chunk_id(doc_id: str, index: int, chunk_hash: str) -> str:
    """Deterministic id for a chunk (usable as a Qdrant point id)."""
    return str(uuid.uuid5(AI_ASSETS_NAMESPACE, f"{doc_id}\x1f{index}\x1f{chunk_hash}"))


def chunk_text(text: str, tokenizer: tokenizers.Tokenizer, settings: ChunkingSettings) -> list[Chunk]:
    """Split one document into chunks; see the module docstring for the rules."""
    return chunk_texts([text], tokenizer, settings)[0]


def chunk_texts(texts: Sequence[str], tokenizer: tokenizers.Tokenizer, settings: ChunkingSettings) -> list[list[Chunk]]:
    """Batch version of :func:`chunk_text` (tokenizes with ``encode_batch``, parallel in Rust);
    the result for each text is identical to ``chunk_text(text, ...)``."""
    settings._validate(None)
    _check_tokenizer(tokenizer)
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str (got {type(t).__name__})")

    results: list[list[Chunk]] = [[] for _ in texts]
    sectioned = _sectionable(tokenizer)
    # Sections of several documents are tokenized together (encode_batch runs them in parallel), up to
    # _BATCH_CHARS characters at a time; a document is planned once its last section is tokenized.
    batch: list[_Section] = []
    batch_chars = 0
    for i, text in enumerate(texts):
        if not text or text.isspace():
            continue
        offsets = _Offsets(len(text))
        bounds = _section_bounds(text, _SECTION_CHARS) if sectioned else [(0, len(text))]
        for j, (a, b) in enumerate(bounds):
            batch.append(_Section(i, offsets, a, b, j + 1 == len(bounds)))
            batch_chars += b - a
            if batch_chars >= _BATCH_CHARS:
                _chunk_batch(texts, batch, tokenizer, settings, results)
                batch, batch_chars = [], 0
    if batch:
        _chunk_batch(texts, batch, tokenizer, settings, results)
    return results


# --------------------------------------------------------------------------------------------------
# internals

_HEADING, _PARA, _LINE, _SENT, _WORD, _PUNCT, _MIDWORD, _END = range(8)
_NO_OVERLAP = frozenset({_HEADING, _PARA, _END})

# The tokenizer holds tens of bytes per character while it works (normalized text, alignments, token
# strings): sections bound that for any document size, and batches bound it for many documents.
_SECTION_CHARS = 1 << 18
_BATCH_CHARS = 1 << 21
# Components that never join characters across a space, tab or newline, nor move them across one:
# with them, tokenizing a text in sections cut after such a character gives the whole text's tokens.
_SECTIONABLE_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"})
_SECTIONABLE_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})

# Markdown heading line starts (up to 3 spaces of indent) and code fences, in one pass.
_BLOCK_RE = re.compile(r"^[ ]{0,3}(?:(?P<fence>`{3,}|~{3,})|(?P<hashes>#{1,6})(?=[ \t\r]|$))", re.M)
# Whitespace runs that contain at least one newline.
_NL_RUN_RE = re.compile(r"[^\S\n]*\n\s*")
# Sentence ends: terminator, optional closing quotes/brackets, then whitespace (CJK: none needed).
_SENT_RE = re.compile(
    r"[.!?][\"'\u201d\u2019)\]]*\s+"
    r"|[\u3002\uff01\uff1f][\u300d\u300f\u201d\u2019\uff09\"')\]]*\s*"
)
# Where a section may end when a stretch of text has no newline (see _section_bounds).
_SPLIT_RE = re.compile("[ \t\n]")
# Whitespace as the BERT normalizer sees it (Python's \s also matches control characters such as
# \x0b or \x1c, which the tokenizer deletes, gluing the words on either side together).
_WS_RE = re.compile("[\t\n\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def _is_cjk(ch: str) -> bool:
    # Same ranges as BERT's _is_chinese_char: every such character is a word on its own.
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_punct(ch: str) -> bool:
    # Same rule as BERT's pre-tokenizer: it splits every such character into its own pre-token.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _check_tokenizer(tokenizer: tokenizers.Tokenizer) -> None:
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        raise ValueError(
            "tokenizer has truncation or padding enabled, so token counts would be wrong; "
            "load it with ai_assets.lib.ingestion.chunking.load_tokenizer()"
        )


def _sectionable(tokenizer: tokenizers.Tokenizer) -> bool:
    """True if tokenizing a text in sections cut just after whitespace gives the same tokens (and
    offsets, once shifted) as tokenizing it whole: a BERT-like pipeline, and no added token that
    contains whitespace or strips it from its neighbours."""
    normalizer, pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    if normalizer is not None and type(normalizer).__name__ not in _SECTIONABLE_NORMALIZERS:
        return False
    if pre_tokenizer is None or type(pre_tokenizer).__name__ not in _SECTIONABLE_PRE_TOKENIZERS:
        return False
    return not any(
        added.lstrip or added.rstrip or any(ch.isspace() for ch in added.content)
        for added in tokenizer.get_added_tokens_decoder().values()
    )


def _section_bounds(text: str, target: int) -> list[tuple[int, int]]:
    """[start, end) sections of about ``target`` characters (at least half), each but the last ending
    just after a newline, else after a space or tab; a stretch with none of these stays whole."""
    bounds: list[tuple[int, int]] = []
    a, n = 0, len(text)
    while n - a > target:
        lo, hi = a + target // 2, a + target
        cut = text.rfind("\n", lo, hi)
        if cut < 0:
            cut = max(text.rfind(" ", lo, hi), text.rfind("\t", lo, hi))
        if cut < 0:
            found = _SPLIT_RE.search(text, hi)
            if found is None:
                break
            cut = found.start()
        if cut + 1 >= n:
            break
        bounds.append((a, cut + 1))
        a = cut + 1
    bounds.append((a, n))
    return bounds


def _groups(texts: list[str], budget: int) -> Iterator[list[str]]:
    """Consecutive runs of ``texts`` of at most ``budget`` characters (or one longer text)."""
    group: list[str] = []
    size = 0
    for t in texts:
        if group and size + len(t) > budget:
            yield group
            group, size = [], 0
        group.append(t)
        size += len(t)
    if group:
        yield group


def _count_tokens(tokenizer: tokenizers.Tokenizer, texts: list[str]) -> list[int]:
    counts: list[int] = []
    for group in _groups(texts, _BATCH_CHARS):  # every Encoding of a group is alive at once
        counts.extend(len(e) for e in tokenizer.encode_batch_fast(group, add_special_tokens=False))
    return counts


def _make_chunks(spans: list[tuple[int, int, str]], counts: list[int]) -> list[Chunk]:
    return [
        Chunk(
            index=index,
            text=t,
            start=start,
            end=end,
            token_count=count,
            chunk_hash=hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest(),
        )
        for index, ((start, end, t), count) in enumerate(zip(spans, counts, strict=True))
    ]


@dataclass(frozen=True)
class _Section:
    doc: int  # index of the document in the input
    offsets: _Offsets  # the document's token offsets, filled section by section
    start: int  # characters [start, end) of the document
    end: int
    last: bool


class _Offsets:
    """Token character offsets of one document as two compact arrays (a list of tuples would cost
    about 150 bytes a token), and whether they are regular: every token non-empty, starts and ends
    non-decreasing. BERT-like tokenizers always give regular offsets."""

    def __init__(self, n_chars: int) -> None:
        code = "i" if n_chars < 2**31 else "q"
        self.starts = array(code)
        self.ends = array(code)
        self.regular = True

    def extend(self, offsets: list[tuple[int, int]], base: int) -> None:
        """Append one section's offsets, relative to the section that starts at ``base``."""
        if not offsets:
            return
        starts = [base + s for s, _ in offsets] if base else list(map(itemgetter(0), offsets))
        ends = [base + e for _, e in offsets] if base else list(map(itemgetter(1), offsets))
        if self.regular:
            self.regular = (
                (not self.starts or (self.starts[-1] <= starts[0] and self.ends[-1] <= ends[0]))
                and all(map(lt, starts, ends))
                and all(map(le, starts, islice(starts, 1, None)))
                and all(map(le, ends, islice(ends, 1, None)))
            )
        self.starts.extend(starts)
        self.ends.extend(ends)


def _chunk_batch(
    texts: list[str],
    batch: list[_Section],
    tokenizer: tokenizers.Tokenizer,
    settings: ChunkingSettings,
    results: list[list[Chunk]],
) -> None:
    """Tokenize a batch of sections, then chunk every document whose last section is among them."""
    encodings = tokenizer.encode_batch([texts[sec.doc][sec.start : sec.end] for sec in batch], add_special_tokens=False)
    done: list[_Section] = []
    for sec, enc in zip(batch, encodings, strict=True):
        sec.offsets.extend(enc.offsets, sec.start)
        if sec.last:
            done.append(sec)
    del encodings

    planned: list[tuple[int, _Doc, list[tuple[int, int]]]] = []
    for sec in done:
        doc = _Doc(texts[sec.doc], sec.offsets, tokenizer, settings)
        if doc.n:
            planned.append((sec.doc, doc, doc.plan(verify_all=False)))

    # Re-tokenize every chunk on its own (in parallel batches): token_count is what the model sees.
    spans = [doc.span_text(s, k) for _, doc, plan in planned for s, k in plan]
    counts = _count_tokens(tokenizer, [t for _, _, t in spans])
    pos = 0
    for i, doc, plan in planned:
        doc_spans, doc_counts = spans[pos : pos + len(plan)], counts[pos : pos + len(plan)]
        pos += len(plan)
        if max(doc_counts) > settings.chunk_size:
            # A cut assumed safe was not (a tokenizer that is not BERT-like): plan this document
            # again, re-tokenizing every chunk as it is chosen and shrinking it until it fits.
            doc_spans = [doc.span_text(s, k) for s, k in doc.plan(verify_all=True)]
            doc_counts = _count_tokens(tokenizer, [t for _, _, t in doc_spans])
            if max(doc_counts) > settings.chunk_size:  # pragma: no cover - fit() prevents this
                raise AssertionError("chunker produced a chunk over chunk_size; please report")
        results[i] = _make_chunks(doc_spans, doc_counts)


class _Doc:
    """One tokenized document and its candidate cut points (token indices: cut k = before token k)."""

    def __init__(
        self,
        text: str,
        offsets: _Offsets,
        tokenizer: tokenizers.Tokenizer,
        settings: ChunkingSettings,
    ) -> None:
        self.text = text
        self.starts, self.ends = offsets.starts, offsets.ends
        self.regular = offsets.regular
        self._cover: array | None = None  # irregular offsets only: see _token_at_or_after_irregular
        self._covered_starts: list[int] = []
        self.tokenizer = tokenizer
        self.size = settings.chunk_size
        self.overlap = settings.chunk_overlap
        self.n = n = len(self.starts)
        if not n:
            return
        token_at = self.token_at_or_after

        # Headings (outside fenced code) and the cuts that would strand them: inside the heading line
        # or right after it.
        heads: list[int] = []
        forbidden: set[int] = set()
        fence: str | None = None
        for m in _BLOCK_RE.finditer(text):
            marker = m.group("fence")
            if marker is not None:
                fence = toggle_fence(fence, marker)
                continue
            if fence is not None:
                continue
            pos = m.start("hashes")
            k = token_at(pos)
            if k >= n:
                continue
            eol = text.find("\n", pos)
            after = token_at(eol) if eol >= 0 else n
            heads.append(k)
            forbidden.update(range(k + 1, after + 1))
        self.forbidden = forbidden

        paras: list[int] = []
        lines: list[int] = []
        for m in _NL_RUN_RE.finditer(text):
            k = token_at(m.end())
            if 0 < k < n:
                (paras if m.group().count("\n") >= 2 else lines).append(k)
        sents: list[int] = []
        for m in _SENT_RE.finditer(text):
            k = token_at(m.end())
            if 0 < k < n:
                sents.append(k)

        def clean(ks: list[int]) -> list[int]:
            return sorted({k for k in ks if 0 < k < n and k not in forbidden})

        self.heads = clean(heads)
        self.paras = clean(paras)
        self.lines = clean(lines)
        self.sents = clean(sents)
        # Paragraph starts an overlap must not reach back across (forbidden or not).
        self.blocks = sorted(set(heads) | set(paras))

    # -- offsets ------------------------------------------------------------------------------------

    def token_at_or_after(self, pos: int) -> int:
        """Index of the first token starting at or after character ``pos`` (n if none).

        Precisely (what ``Encoding.char_to_token`` gave, at a cost that grew with the document): the
        first token ``k`` covering the first covered character at or after ``pos``; ``k + 1`` if
        that token starts before ``pos``. With regular offsets that is token ``i``, the first one
        ending after ``pos`` (nothing before it covers ``pos`` or anything later, and it covers
        ``pos`` or starts the next covered stretch), or ``i + 1`` if ``i`` starts before ``pos``."""
        if not self.regular:
            return self._token_at_or_after_irregular(pos)
        i = bisect_right(self.ends, pos)
        return i + 1 if i < self.n and self.starts[i] < pos else i

    def _token_at_or_after_irregular(self, pos: int) -> int:
        # Empty or unordered tokens (no BERT-like tokenizer makes them): a map from each character
        # to the first token covering it, 4 bytes a character, built on first use.
        text, starts, ends, n = self.text, self.starts, self.ends, self.n
        if self._cover is None:
            cover = array("i" if n < 2**31 else "q", [-1]) * len(text)
            for k in range(n - 1, -1, -1):
                s, e = starts[k], min(ends[k], len(text))
                if s < e:
                    cover[s:e] = array(cover.typecode, [k]) * (e - s)
            self._cover = cover
            self._covered_starts = sorted({s for s, e in zip(starts, ends, strict=True) if s < e})
        if pos >= len(text):
            return n
        k = self._cover[pos]
        if k < 0:  # not covered: no token covering a later character starts before pos either
            j = bisect_right(self._covered_starts, pos)
            if j == len(self._covered_starts):
                return n
            k = self._cover[self._covered_starts[j]]
        return k if starts[k] >= pos else k + 1

    def start_char(self, k: int) -> int:
        return self.starts[k]

    # -- boundary tests -----------------------------------------------------------------------------

    def word_start(self, k: int) -> bool:
        """True if a cut before token k falls between two words."""
        text = self.text
        gap_start = self.ends[k - 1]
        gap_end = self.starts[k]
        if gap_end > gap_start and _WS_RE.search(text, gap_start, gap_end):
            return True
        return _is_cjk(text[gap_end]) or _is_cjk(text[gap_start - 1])

    def punct_boundary(self, k: int) -> bool:
        """True if a cut before token k falls next to punctuation (a pre-tokenizer split)."""
        return _is_punct(self.text[self.ends[k - 1] - 1]) or _is_punct(self.text[self.starts[k]])

    def after_punct(self, k: int) -> bool:
        return _is_punct(self.text[self.ends[k - 1] - 1])

    # -- planning -----------------------------------------------------------------------------------

    def span_text(self, s: int, k: int) -> tuple[int, int, str]:
        """(start, end, text) of the chunk holding tokens [s, k), whitespace-stripped. Characters the
        tokenizer drops between two chunks go with the earlier one, so chunks cover the document."""
        text = self.text
        cs = 0 if s == 0 else self.start_char(s)
        ce = len(text) if k >= self.n else self.start_char(k)
        raw = text[cs:ce]
        stripped = raw.strip()
        if not stripped:
            return cs, cs, ""
        lead = len(raw) - len(raw.lstrip())
        return cs + lead, cs + lead + len(stripped), stripped

    def count(self, s: int, k: int) -> int:
        return len(self.tokenizer.encode(self.span_text(s, k)[2], add_special_tokens=False))

    def pick_cut(self, s: int, floor: int) -> tuple[int, int]:
        """Best cut for the chunk starting at token s; it must lie past ``floor`` (the previous
        chunk's end), so that an overlapping chunk never ends inside the previous one."""
        n, size = self.n, self.size
        if n - s <= size:
            return n, _END
        lo, hi = s + size // 2, s + size
        for rank, ks in ((_HEADING, self.heads), (_PARA, self.paras), (_LINE, self.lines), (_SENT, self.sents)):
            i = bisect_right(ks, hi) - 1
            if i >= 0 and ks[i] > lo:
                return ks[i], rank
        forbidden = self.forbidden
        for k in range(hi, lo, -1):
            if k not in forbidden and self.word_start(k):
                return k, _WORD
        # No word boundary in the window: a shorter chunk beats cutting a word.
        floor = max(floor, s)
        for k in range(lo, floor, -1):
            if k not in forbidden and self.word_start(k):
                return k, _WORD
        # Only a heading line longer than a whole chunk gets here: it has to be cut somewhere.
        if forbidden:
            for k in range(hi, floor, -1):
                if self.word_start(k):
                    return k, _WORD
        for k in range(hi, floor, -1):
            if self.after_punct(k):
                return k, _PUNCT
        return hi, _MIDWORD

    def next_start(self, s: int, k: int, rank: int) -> int:
        if rank in _NO_OVERLAP or not self.overlap:
            return k
        floor = max(k - self.overlap, s + (k - s + 1) // 2)
        i = bisect_left(self.blocks, k) - 1  # latest paragraph/heading start before k
        if i >= 0 and self.blocks[i] >= floor:
            floor = self.blocks[i]
        floor = max(floor, s + 1)
        # A sentence (or line) start in the first half of the overlap reads better than a word start.
        mid = floor + (k - floor) // 2
        for ks in (self.sents, self.lines):
            i = bisect_left(ks, floor)
            if i < len(ks) and ks[i] <= mid:
                return ks[i]
        for j in range(floor, k):
            if j not in self.forbidden and self.word_start(j):
                return j
        return k

    def fit(self, s: int, k: int, floor: int) -> int:
        """Largest cut <= k whose chunk, re-tokenized alone, fits: the last word boundary past
        ``floor`` (the previous chunk's end) first, then any token boundary."""
        size = self.size
        if self.count(s, k) <= size:
            return k
        floor = max(floor, s)
        for j in range(k - 1, floor, -1):
            if self.word_start(j) and self.count(s, j) <= size:
                return j
        for j in range(k - 1, s, -1):
            if self.count(s, j) <= size:
                return j
        return s + 1  # one token's text; tokens of this vocabulary re-tokenize to <= 6 tokens

    def plan(self, verify_all: bool) -> list[tuple[int, int]]:
        """Token ranges [s, k) of the chunks. Chunks whose start or end falls inside a word (where
        re-tokenizing may disagree) are verified now; the caller re-tokenizes everything anyway."""
        plan: list[tuple[int, int]] = []
        s = k = 0
        start_midword = False
        while s < self.n:
            prev_end = k
            k, rank = self.pick_cut(s, prev_end)
            if verify_all or start_midword or rank == _MIDWORD:
                fitted = self.fit(s, k, prev_end)
                if fitted != k:
                    k, rank = fitted, _PARA  # shrunk: no overlap
            plan.append((s, k))
            if k >= self.n:
                break
            s_next = self.next_start(s, k, rank)
            start_midword = not (self.word_start(s_next) or self.punct_boundary(s_next))
            s = s_next
        return plan

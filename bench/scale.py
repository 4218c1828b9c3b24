"""Scale benchmark: the embedded default (Qdrant Edge) at 10k, 30k and 100k documents, and qdrant-client's
local mode (the previous embedded default) side by side at 10k and 30k. Prints `key: value` lines.

    python bench/scale.py --quick --fake-vectors   # 10k documents, Edge and local mode (~1.5 min here)
    python bench/scale.py --quick --fake-vectors --local-sizes ""   # Edge only (~25 s)
    python bench/scale.py --fake-vectors           # 10k, 30k, 100k on Edge; local mode at 10k and 30k
    python bench/scale.py --sizes 30000 --local-sizes ""   # any sizes; no local mode
    python bench/scale.py                          # the real model (hours at 100k on 2 cores)

Documents are synthetic but realistic: a BEIR-style JSONL corpus (`--format markdown` for one Markdown
file per document) of SciFact sentences drawn at random (a fixed seed) into ~1-3 KB pages of
paragraphs, a third with `##` section headings, ~2.8 chunks each at the default chunk size. Chunking uses
the model's real tokenizer either way. With `--fake-vectors` every text's vector is a unit vector drawn
from a generator seeded by the text's blake2b hash (the same text, the same vector), so the store and the
sync engine are measured at 100k documents without hours of model time.

Each (size, store) runs in a fresh process, so `peak_rss_mb` (ru_maxrss once the three job runs are done)
is that size's own. In it: the `rag_ingestion` job on a fresh data folder (`ingest_s`), again with nothing
changed (`noop_rerun_s`), again after the text of 1 % of the documents was edited (`one_percent_change_s`);
then the store is opened anew (`open_s`: open + first exact count), every point id is compared with the
chunk table (`audit_exact`, plus 200 sampled points' payload and vector), and 300 single-vector queries
(top 100, payload `doc_id`, after 3 warm-up queries) are timed through the store's `search`
(`search_p50_ms`, `search_p95_ms`, `search_mean_ms`). `edge_vs_local_search_speedup_<size>` is local p50 /
Edge p50; `edge_vs_local_rss_ratio_<size>` is Edge peak RSS / local peak RSS. Local mode commits each
point in its own sqlite transaction (qdrant-client 1.20): 2-6 ms a point on this disk, most of its
ingest time. `peak_rss_anon_mb` / `peak_rss_file_mb`: the highest anonymous and file-backed (mmapped
store segments, reclaimable page cache) parts of RSS sampled during the job (not necessarily at the same
moment). `ingest_step_peak_rss_mb_<step>` is the highest RSS sampled (every 50 ms) while that step of the
first run ran (steps run one after another in one process, as the job runs in production, so each
includes what the earlier ones kept), `ingest_step_start_rss_mb_<step>` the RSS it started on;
`noop_step_peak_rss_mb_<step>` and `change_step_peak_rss_mb_<step>` are the same peaks in the later runs,
and `noop_step_s_<step>` and `change_step_s_<step>` their time per step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import SCIFACT, chunk_table, emit  # noqa: E402  (bench/ingest.py)

SEED = 20240917
QUERIES = 300
WARMUP_QUERIES = 3
TOP_K = 100
EDIT_EVERY = 100  # 1 % of the documents
AUDIT_SAMPLE = 200
FAKE_VECTORS_LINE = "fake (hash-seeded, deterministic): measures the store and sync engine, not the model"

# --- fake vectors -----------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def fake_vectors(texts: list[str], dimension: int, block: int = 4096) -> np.ndarray:
    """Unit float32 vectors, one per text, a pure function of the text: a splitmix64 stream seeded by the
    text's blake2b hash, each 64-bit draw split into two uniforms, turned into Gaussians (Box-Muller) and
    normalised. Vectorised: a few µs a text."""
    out = np.empty((len(texts), dimension), dtype=np.float32)
    counter = (np.arange(1, dimension + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    for start in range(0, len(texts), block):
        part = texts[start : start + block]
        digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in part)
        z = np.frombuffer(digests, dtype="<u8").astype(np.uint64)[:, None] + counter
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
        halves = z.view(np.uint32).reshape(len(part), dimension, 2)
        u = (halves.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-32)  # uniform in (0, 1)
        g = np.sqrt(np.float32(-2.0) * np.log(u[..., 0])) * np.cos(np.float32(2.0 * np.pi) * u[..., 1])
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        out[start : start + len(part)] = g
    return out


def fake_model():
    """The bundled model's tokenizer, dimension and sequence length, with `fake_vectors` for `encode`."""
    from ai_assets.resources.embeddings import EmbeddingModelResource

    class FakeVectorModel(EmbeddingModelResource):
        dtype: str = "float32"  # `auto` could import torch for its load probe

        @property
        def identity(self) -> dict[str, Any]:
            return {**super().identity, "vectors": "fake-hash-seeded-1"}

        def encode(self, texts: list[str]) -> np.ndarray:
            return fake_vectors(list(texts), self.dimension)

    return FakeVectorModel()


# --- the corpus ----------------------------------------------------------------------------------------


def _scifact_pool() -> tuple[list[str], list[str]]:
    """Every sentence of the SciFact abstracts (30-400 characters), and every title."""
    sentences, titles = [], []
    splitter = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")
    with (SCIFACT / "corpus.jsonl").open() as f:
        for line in f:
            record = json.loads(line)
            titles.append(" ".join(record["title"].split()))
            sentences += [s for s in splitter.split(" ".join(record["text"].split())) if 30 <= len(s) <= 400]
    return sentences, titles


def _documents(n: int):
    """(id, title, body) of `n` documents, deterministically: sentences drawn at random from SciFact,
    2-5 to a paragraph, pages of ~1-3 KB (log-normal, median ~1.7 KB); about a third of the pages have 1-2
    `##` sections headed by a few words of another title."""
    sentences, titles = _scifact_pool()
    rng = random.Random(SEED)
    for i in range(n):
        target = min(3200, max(900, int(rng.lognormvariate(7.3, 0.3))))
        headings = rng.choice((0, 0, 1, 1, 2)) if rng.random() < 0.75 else 0
        parts, size, paragraph = [], 0, []
        heading_at = sorted(rng.sample(range(1, 6), headings)) if headings else []
        while size < target:
            sentence = sentences[rng.randrange(len(sentences))]
            paragraph.append(sentence)
            size += len(sentence) + 1
            if len(paragraph) >= rng.randint(2, 5) or size >= target:
                if heading_at and len([p for p in parts if not p.startswith("## ")]) == heading_at[0]:
                    words = titles[rng.randrange(len(titles))].split()[: rng.randint(2, 6)]
                    parts.append("## " + " ".join(words).rstrip(".:,;"))
                    heading_at.pop(0)
                parts.append(" ".join(paragraph))
                paragraph = []
        yield f"d{i:06d}", titles[rng.randrange(len(titles))], "\n\n".join(parts)


def write_corpus(folder: Path, n: int, fmt: str) -> tuple[Path, int]:
    """The corpus of `n` documents in `folder`; returns (the source location, bytes of text)."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    if fmt == "jsonl":
        path = folder / "corpus.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for doc_id, title, body in _documents(n):
                f.write(json.dumps({"_id": doc_id, "title": title, "text": body}, ensure_ascii=False) + "\n")
                total += len(title) + 1 + len(body)
        return path, total
    root = folder / "docs"
    for doc_id, title, body in _documents(n):
        sub = root / doc_id[:4]  # 1,000 pages a folder
        sub.mkdir(parents=True, exist_ok=True)
        text = f"# {title}\n\n{body}\n"
        (sub / f"{doc_id}.md").write_text(text, encoding="utf-8")
        total += len(text)
    return root, total


def edit_one_percent(location: Path) -> int:
    """Edit the text of every 100th document: a sentence inserted after its first paragraph (so the
    chunks after it shift too, as a real edit does). Returns how many documents were edited."""
    edit = " This sentence was edited by the scale benchmark."
    edited = 0
    if location.is_file():
        tmp = location.with_suffix(".tmp")
        with location.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i % EDIT_EVERY == 0:
                    record = json.loads(line)
                    head, sep, rest = record["text"].partition("\n\n")
                    record["text"] = head + edit + sep + rest
                    line = json.dumps(record, ensure_ascii=False) + "\n"
                    edited += 1
                dst.write(line)
        os.replace(tmp, location)
        return edited
    for i, path in enumerate(sorted(location.rglob("*.md"))):
        if i % EDIT_EVERY == 0:
            title, sep, body = path.read_text(encoding="utf-8").partition("\n\n")
            head, sep2, rest = body.partition("\n\n")
            path.write_text(title + sep + head + edit + sep2 + rest, encoding="utf-8")
            edited += 1
    return edited


# --- one size on one store, in its own process -------------------------------------------------------------


def job_runner(sources: str, model, qdrant):
    """`bench/ingest.py`'s runner, with the Qdrant resource as a parameter; each run returns
    (seconds, {asset.key: metadata value}, {step: seconds})."""
    import dagster as dg
    from ingest import ingestion_definitions

    job = ingestion_definitions(sources, model, qdrant).resolve_job_def("rag_ingestion")
    instance = dg.DagsterInstance.ephemeral()
    step_windows: list[dict[str, tuple[float, float]]] = []

    def run() -> tuple[float, dict[str, Any], dict[str, float]]:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance)
        elapsed = time.perf_counter() - started
        assert result.success
        failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
        assert not failed, failed
        metadata = {
            f"{event.asset_key.to_user_string()}.{key}": value.value
            for event in result.get_asset_materialization_events()
            for key, value in event.materialization.metadata.items()
        }
        steps, windows = {}, {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None or not event.step_key:
                continue
            if event.event_type_value == "STEP_START":
                windows[event.step_key] = (entry.timestamp, entry.timestamp)
            elif event.event_type_value == "STEP_SUCCESS":
                steps[event.step_key] = event.event_specific_data.duration_ms / 1000
                windows[event.step_key] = (windows[event.step_key][0], entry.timestamp)
        step_windows.append(windows)
        return elapsed, metadata, steps

    run.step_windows = step_windows  # type: ignore[attr-defined]
    return run


def _open_store(kind: str, data_dir: Path):
    if kind == "edge":
        from ai_assets.lib.vector_store.edge import EdgeStore

        return EdgeStore(data_dir / "qdrant")
    from qdrant_client import QdrantClient

    from ai_assets.lib.vector_store.client_store import QdrantClientStore

    path = data_dir / "qdrant" / "qdrant-client"
    return QdrantClientStore(QdrantClient(path=str(path)), str(path), indexes=False)


def _audit(store, alias: str, model, fake: bool) -> tuple[bool, dict[str, Any]]:
    """Point ids == chunk ids (both ways), and AUDIT_SAMPLE sampled points carry their chunk's hash and
    (with fake vectors) exactly the vector of its text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = chunk_table()
    table = chunks.read_columns(["chunk_id", "chunk_hash"])
    chunk_ids = table["chunk_id"].combine_chunks()
    ids = pa.array([pid for page in store.scroll(alias, ["doc_id"]) for pid, _ in page], pa.string())
    stale = pc.sum(pc.invert(pc.is_in(ids, value_set=chunk_ids))).as_py() or 0
    missing = pc.sum(pc.invert(pc.is_in(chunk_ids, value_set=ids))).as_py() or 0
    rng = random.Random(SEED)
    rows = sorted(rng.sample(range(len(chunk_ids)), min(AUDIT_SAMPLE, len(chunk_ids))))
    sample = {chunk_ids[i].as_py(): table["chunk_hash"][i].as_py() for i in rows}
    points = store.retrieve(alias, list(sample), fields=["chunk_hash", "text"], with_vectors=True)
    payload_ok = len(points) == len(sample) and all(p.payload["chunk_hash"] == sample[p.id] for p in points)
    vectors_ok = True
    if fake and points:
        expected = fake_vectors([p.payload["text"] for p in points], model.dimension)
        stored = np.asarray([p.vector for p in points], dtype=np.float32)
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)
        vectors_ok = bool((np.sum(expected * stored, axis=1) > 0.9999).all())
    exact = stale == 0 and missing == 0 and len(ids) == len(chunk_ids) and payload_ok and vectors_ok
    return exact, {"audit_stale": stale, "audit_missing": missing, "audit_sample_ok": payload_ok and vectors_ok}


def _query_vectors(model, fake: bool, n: int) -> np.ndarray:
    texts = []
    with (SCIFACT / "queries.jsonl").open() as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return fake_vectors(texts, model.dimension) if fake else model.encode(texts)


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class RssSampler:
    """This process's RSS every 50 ms on a thread, so that each job step's own peak can be told apart, and
    how much of it is anonymous memory and how much mapped files (the store's mmapped segments: page
    cache the kernel can reclaim, which ru_maxrss counts all the same)."""

    def __init__(self, every_s: float = 0.05):
        import threading

        self.samples: list[tuple[float, int, int]] = []  # (time, resident, file-backed) in pages
        self.every_s = every_s
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        with open("/proc/self/statm") as statm:
            while not self._stop.wait(every_s):
                statm.seek(0)
                fields = statm.read().split()
                self.samples.append((time.time(), int(fields[1]), int(fields[2])))

    def _mb(self, pages: int) -> float:
        return round(pages * self._page / 2**20, 1)

    def peak_mb(self, start: float, end: float) -> float:
        inside = [rss for t, rss, _ in self.samples if start <= t <= end + self.every_s]
        return self._mb(max(inside, default=0))

    def at_mb(self, moment: float) -> float:
        """RSS in the first sample taken at or after `moment`."""
        return self._mb(next((rss for t, rss, _ in self.samples if t >= moment), 0))

    def peaks_mb(self) -> tuple[float, float]:
        """The highest anonymous and the highest file-backed resident memory sampled."""
        anon = max((rss - shared for _, rss, shared in self.samples), default=0)
        return self._mb(anon), self._mb(max((shared for _, _, shared in self.samples), default=0))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _key(step: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", step.lower())


def worker(args: argparse.Namespace) -> None:
    from ai_assets.resources.data_folder import DataFolderResource
    from ai_assets.resources.qdrant import QdrantResource

    work = Path(args.work_dir)
    data_dir = work / "data"
    os.environ["AI_ASSETS_DATA_DIR"] = str(data_dir)
    location = Path(args.source)
    fake = args.fake_vectors
    if fake:
        model = fake_model()
    else:
        from ai_assets.resources.embeddings import EmbeddingModelResource

        model = EmbeddingModelResource()
        model.encode(["warm up"])  # the model load is excluded from every figure
    if args.worker == "edge":
        qdrant = QdrantResource(data_folder=DataFolderResource(path=str(data_dir)))
    else:
        from ai_assets_tests.resources import QdrantClientStoreResource

        qdrant = QdrantClientStoreResource(data_folder=DataFolderResource(path=str(data_dir)))
    out: dict[str, Any] = {"baseline_rss_mb": _rss_mb()}
    sampler = RssSampler()
    run = job_runner(f"scale={location}", model, qdrant)

    def log(message: str) -> None:
        print(f"[scale {args.label} {args.worker}] {message}", file=sys.stderr, flush=True)

    ingest_s, meta, steps = run()
    out["documents"] = meta["raw_documents.documents"]
    out["chunks"] = meta["document_chunks.chunks"]
    out["ingest_s"] = round(ingest_s, 2)
    for step in ("raw_documents", "document_chunks", "document_embeddings"):
        out[f"ingest_{step}_s"] = round(steps.get(step, 0.0), 2)
    out["ingest_encode_s"] = meta["document_embeddings.encode_s"]
    out["ingest_write_s"] = meta["document_embeddings.write_s"]
    out["ingest_index_optimize_s"] = meta["document_embeddings.index_optimize_s"]
    out["ingest_rss_mb"] = _rss_mb()
    log(f"ingest {ingest_s:.1f} s, {out['chunks']} chunks, rss {out['ingest_rss_mb']} MB")

    noop_s, meta, steps = run()
    out["noop_rerun_s"] = round(noop_s, 3)
    out["noop_rerun_embedded"] = meta["document_embeddings.chunks_embedded"]
    for step, seconds in sorted(steps.items()):
        out[f"noop_step_s_{_key(step)}"] = round(seconds, 3)
    log(f"no-op {noop_s:.1f} s")

    out["one_percent_change_documents"] = edit_one_percent(location)
    change_s, meta, steps = run()
    out["one_percent_change_s"] = round(change_s, 3)
    for step, seconds in sorted(steps.items()):
        out[f"change_step_s_{_key(step)}"] = round(seconds, 3)
    out["one_percent_change_embedded"] = meta["document_embeddings.chunks_embedded"]
    out["one_percent_change_deleted"] = meta["document_embeddings.chunks_deleted"]
    out["chunks_after_change"] = meta["document_chunks.chunks"]
    out["points_after_change"] = meta["document_embeddings.point_count"]
    out["peak_rss_mb"] = _rss_mb()
    sampler.stop()
    out["peak_rss_anon_mb"], out["peak_rss_file_mb"] = sampler.peaks_mb()
    # The first run's steps, in order: RSS rarely drops, so a later run's figures would repeat these.
    for step, (start, end) in run.step_windows[0].items():
        out[f"ingest_step_peak_rss_mb_{_key(step)}"] = sampler.peak_mb(start, end)
        out[f"ingest_step_start_rss_mb_{_key(step)}"] = sampler.at_mb(start)
    for prefix, windows in (("noop", run.step_windows[1]), ("change", run.step_windows[2])):
        for step, (start, end) in windows.items():
            out[f"{prefix}_step_peak_rss_mb_{_key(step)}"] = sampler.peak_mb(start, end)
    log(f"1 % change {change_s:.1f} s, peak rss {out['peak_rss_mb']} MB")

    started = time.perf_counter()
    store = _open_store(args.worker, data_dir)
    counted = store.count(qdrant.alias)
    out["open_s"] = round(time.perf_counter() - started, 3)
    assert counted == out["points_after_change"], (counted, out["points_after_change"])

    out["audit_exact"], details = _audit(store, qdrant.alias, model, fake)
    out.update(details)

    vectors = _query_vectors(model, fake, QUERIES + WARMUP_QUERIES)
    times = []
    for i in range(len(vectors)):
        started = time.perf_counter()
        hits = store.search(qdrant.alias, vectors[i : i + 1], TOP_K, fields=["doc_id"])[0]
        elapsed = time.perf_counter() - started
        assert len(hits) == min(TOP_K, counted) and "doc_id" in hits[0].payload
        if i >= WARMUP_QUERIES:
            times.append(elapsed * 1000)
    store.close()
    out["search_p50_ms"] = round(float(np.percentile(times, 50)), 2)
    out["search_p95_ms"] = round(float(np.percentile(times, 95)), 2)
    out["search_mean_ms"] = round(float(np.mean(times)), 2)
    out["peak_rss_with_search_mb"] = _rss_mb()
    out["torch_imported"] = "torch" in sys.modules
    log(f"search p50 {out['search_p50_ms']} ms, p95 {out['search_p95_ms']} ms")
    (work / "result.json").write_text(json.dumps(out))


# --- the driver ---------------------------------------------------------------------------------------------


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def run_worker(kind: str, n: int, size_dir: Path, corpus: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = size_dir / kind
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    source = work / corpus.name
    if corpus.is_file():
        shutil.copyfile(corpus, source)
    else:
        shutil.copytree(corpus, source)
    command = [sys.executable, __file__, "--worker", kind, "--label", label(n), "--work-dir", str(work)]
    command += ["--source", str(source)] + (["--fake-vectors"] if args.fake_vectors else [])
    started = time.perf_counter()
    # The worker's stdout (Dagster's console log included) goes to stderr: stdout holds the figures only.
    subprocess.run(command, check=True, stdout=sys.stderr)
    print(f"[scale {label(n)} {kind}] done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    result = json.loads((work / "result.json").read_text())
    if not args.keep:
        shutil.rmtree(work / "data", ignore_errors=True)
    return result


EDGE_KEYS = (
    "documents",
    "chunks",
    "ingest_s",
    "ingest_raw_documents_s",
    "ingest_document_chunks_s",
    "ingest_document_embeddings_s",
    "ingest_encode_s",
    "ingest_write_s",
    "ingest_index_optimize_s",
    "noop_rerun_s",
    "noop_rerun_embedded",
    "one_percent_change_documents",
    "one_percent_change_s",
    "one_percent_change_embedded",
    "one_percent_change_deleted",
    "chunks_after_change",
    "points_after_change",
    "ingest_rss_mb",
    "peak_rss_mb",
    "peak_rss_anon_mb",
    "peak_rss_file_mb",
    "peak_rss_with_search_mb",
    "open_s",
    "search_p50_ms",
    "search_p95_ms",
    "search_mean_ms",
    "audit_stale",
    "audit_missing",
    "audit_exact",
)


def _value(value: Any) -> Any:
    return str(value).lower() if isinstance(value, bool) else value


def driver(args: argparse.Namespace) -> None:
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.local_sizes is None:
        args.local_sizes = "10000" if args.quick else "10000,30000"
    local_sizes = {int(s) for s in args.local_sizes.split(",") if s.strip()}
    wall = time.perf_counter()
    print("# bench/scale.py: rag_ingestion on the embedded default (Qdrant Edge) per size, qdrant-client local")
    print(
        f"# mode side by side; search: {QUERIES} single-vector queries, top {TOP_K}, payload doc_id, "
        f"{WARMUP_QUERIES} warm-up queries excluded; edge_vs_local_search_speedup = local p50 / Edge p50"
    )
    if not local_sizes:
        print("# local mode side by side: not run (--local-sizes)")
    if args.fake_vectors:
        emit("vectors", FAKE_VECTORS_LINE)
    else:
        from ai_assets.resources.embeddings import EmbeddingModelResource

        emit("vectors", f"model {EmbeddingModelResource().name} (EMBEDDING_DTYPE auto), load excluded from timings")
    emit("corpus_format", args.format)
    emit("cpu_cores", len(os.sched_getaffinity(0)))
    emit("load_average_1m_start", round(os.getloadavg()[0], 2))
    tmp = tempfile.mkdtemp(prefix="bench-scale-", dir=args.work_dir)
    try:
        for n in sizes:
            size_dir = Path(tmp) / label(n)
            started = time.perf_counter()
            corpus, chars = write_corpus(size_dir / "corpus", n, args.format)
            print(f"[scale {label(n)}] corpus written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            edge = run_worker("edge", n, size_dir, corpus, args)
            suffix = label(n)
            emit(f"mean_document_chars_{suffix}", round(chars / n))
            for key in EDGE_KEYS:
                emit(f"{key}_{suffix}", _value(edge[key]))
            emit(f"chunks_per_document_{suffix}", round(edge["chunks"] / edge["documents"], 2))
            emit(f"baseline_rss_mb_{suffix}", edge["baseline_rss_mb"])
            for key, value in edge.items():
                if key.startswith(("noop_step_", "change_step_", "ingest_step_")):
                    emit(f"{key}_{suffix}", value)
            if n in local_sizes:
                local = run_worker("local", n, size_dir, corpus, args)
                for key in EDGE_KEYS:
                    if key not in ("documents", "chunks"):
                        emit(f"local_{key}_{suffix}", _value(local[key]))
                for key, value in local.items():
                    if key.startswith("ingest_step_peak_rss_mb_"):
                        emit(f"local_{key}_{suffix}", value)
                emit(f"edge_vs_local_search_speedup_{suffix}", round(local["search_p50_ms"] / edge["search_p50_ms"], 1))
                emit(
                    f"edge_vs_local_search_speedup_mean_{suffix}",
                    round(local["search_mean_ms"] / edge["search_mean_ms"], 1),
                )
                emit(f"edge_vs_local_rss_ratio_{suffix}", round(edge["peak_rss_mb"] / local["peak_rss_mb"], 3))
                emit(f"edge_vs_local_ingest_speedup_{suffix}", round(local["ingest_s"] / edge["ingest_s"], 2))
                emit(f"edge_vs_local_open_speedup_{suffix}", round(local["open_s"] / edge["open_s"], 1))
    finally:
        if args.keep:
            print(f"[scale] corpora and stores kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    emit("load_average_1m_end", round(os.getloadavg()[0], 2))
    emit("wall_s", round(time.perf_counter() - wall, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k documents only (Edge and local mode, < 5 min)")
    parser.add_argument("--fake-vectors", action="store_true", help="hash-seeded vectors instead of the model")
    parser.add_argument("--sizes", default="10000,30000,100000", help="document counts, comma separated")
    parser.add_argument(
        "--local-sizes", default=None, help="sizes also run on local mode (default 10000,30000; 10000 with --quick)"
    )
    parser.add_argument("--format", choices=("jsonl", "markdown"), default="jsonl", help="how the corpus is stored")
    parser.add_argument("--work-dir", default=None, help="where the corpora and stores go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and stores")
    parser.add_argument("--worker", choices=("edge", "local"), help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()

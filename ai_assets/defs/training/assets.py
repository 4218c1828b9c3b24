"""Fine-tuning the embedding model behind the knowledge base: training data from the index -> a model
trained in its own process (here, or on a Kubernetes GPU) -> a blocking evaluation against the deployed
model -> deployment behind the collection alias, with rollback."""

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from ai_assets.lib import settings
from ai_assets.lib.evaluation.coverage import indexed_doc_ids
from ai_assets.lib.evaluation.eval_set import load_eval_set
from ai_assets.lib.evaluation.metrics import retrieval_report
from ai_assets.lib.evaluation.retrieval import search_documents
from ai_assets.lib.evaluation.synthesis import pick_chunks, question_prompts, synthetic_questions
from ai_assets.lib.ingestion.vector_index import collection_fingerprint, collection_name
from ai_assets.lib.llm.answering import answer_with
from ai_assets.lib.metadata import preview_table, table_metadata
from ai_assets.lib.tables import ParquetTable
from ai_assets.lib.training.dataset import (
    TRAIN,
    VALIDATION,
    TrainingDataError,
    TrainingQuery,
    build_examples,
    check_splits,
    split_by_document,
)
from ai_assets.lib.training.deployment import (
    BuildStats,
    build_collection,
    superseded_collections,
    verify_collection,
)
from ai_assets.lib.training.gate import gate_failures
from ai_assets.lib.training.k8s import K8S_CONFIG_TAG, gpu_step_k8s_config
from ai_assets.lib.training.registry import (
    Deployment,
    Registry,
    RegistryError,
    folder_digest,
    model_version,
    write_once,
)
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource, fine_tuned_name
from ai_assets.resources.llm import LLMResource
from ai_assets.resources.qdrant import QdrantResource
from ai_assets.resources.training import TrainingLauncherResource, TrainingResource

OWNERS = ["team:ml-platform"]
GROUP = "training"
# Retrieval cut-offs reported for both models; the gate's accuracy@k is added when it is another.
REPORTED_KS = (1, 3, 5, 10, 100)


# --- the values passed between the steps -----------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """The files of one training set: content-addressed by `data_version`."""

    folder: str
    train_path: str
    validation_path: str
    data_version: str
    train_pairs: int
    validation_queries: int
    source: str


@dataclass(frozen=True)
class ModelCandidate:
    """A fine-tuned model in the model store."""

    version: str
    path: str
    name: str  # what it is called in collection fingerprints (`fine_tuned_name`)
    base_model: str
    data_version: str
    params: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class GateReport:
    """The candidate against the deployed model on the validation split, and the gate's verdict."""

    candidate: ModelCandidate
    candidate_collection: str
    deployed_name: str
    candidate_metrics: dict[str, float]
    deployed_metrics: dict[str, float]
    accuracy_k: int
    passed: bool
    failures: list[str] = field(default_factory=list)


# --- training_dataset -------------------------------------------------------------------------------


class TrainingDatasetConfig(dg.Config):
    # Hard negatives per pair, mined from the query's top `search_limit` chunks after skipping the
    # `skip_top` closest other results and any within `relative_margin` of the positive's score.
    negatives_per_query: int = 1
    search_limit: int = 30
    skip_top: int = 3
    relative_margin: float = 0.05
    # Fewer training pairs than this stops the run before any training: a model tuned on a handful of
    # pairs only memorises them.
    min_train_pairs: int = 16


def _preview_columns(negatives: int) -> list[dg.TableColumn]:
    return [
        dg.TableColumn("query_id"),
        dg.TableColumn("anchor", description="the query"),
        dg.TableColumn("positive", description="a passage of a relevant document"),
        *(
            dg.TableColumn(f"negative_{i}", description="a hard negative mined from the index")
            for i in range(1, negatives + 1)
        ),
    ]


@dg.asset(
    group_name=GROUP,
    kinds={"python", "jsonl"},
    owners=OWNERS,
    code_version="1",
    deps=["document_embeddings"],
    pool="qdrant",
)
def training_dataset(
    context: dg.AssetExecutionContext,
    config: TrainingDatasetConfig,
    training: TrainingResource,
    llm: LLMResource,
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    data_folder: DataFolderResource,
    document_chunks: ParquetTable,
) -> dg.Output[TrainingData]:
    """(query, positive passage, hard negative) rows to fine-tune the embedding model on, and held-out
    validation queries.

    Queries come from TRAINING_SET (a golden JSONL file, or a BEIR folder's `qrels/train.tsv`; never its
    test split) or, without one, are written by the LLM from indexed chunks (marked synthetic). The
    positive is the relevant document's chunk closest to the query; negatives are mined from the index,
    never from a relevant document. Queries that share a document are kept in one split, so no document
    is in both training and validation. Written as JSONL under a content version."""
    started = time.perf_counter()
    queries, source = _training_queries(context, training, llm, document_chunks)
    split_of = split_by_document({q.id: q.relevant for q in queries}, training.fraction())
    train_queries = [q for q in queries if split_of.get(q.id) == TRAIN]
    validation = [q for q in queries if split_of.get(q.id) == VALIDATION]
    context.log.info(f"{len(queries)} queries from {source}: {len(train_queries)} train, {len(validation)} validation")

    store = qdrant.get_store(context.log)
    vectors = embedding_model.encode([q.text for q in train_queries])
    rows, stats = build_examples(
        train_queries,
        vectors,
        store,
        qdrant.alias,
        negatives=config.negatives_per_query,
        search_limit=config.search_limit,
        skip_top=config.skip_top,
        relative_margin=config.relative_margin,
    )
    indexed = indexed_doc_ids(store, qdrant.alias)
    # Released before the long training step that follows in the same run: ingestion may write again.
    qdrant.close()
    positives = Counter(row["query_id"] for row in rows)
    for q in validation:
        positives[q.id] = sum(1 for doc, grade in q.relevant.items() if grade > 0 and doc in indexed)
    pairs = check_splits(split_of, positives, config.min_train_pairs, where=source)

    train_text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    validation_text = "".join(
        json.dumps({"id": q.id, "query": q.text, "relevant": dict(q.relevant)}, ensure_ascii=False) + "\n"
        for q in validation
        if positives[q.id]
    )
    version = hashlib.sha256(f"{train_text}\x00{validation_text}".encode()).hexdigest()[:16]
    folder = write_once(
        data_folder.folder("training", "embeddings", version),
        {"train.jsonl": train_text, "validation.jsonl": validation_text},
    )
    data = TrainingData(
        folder=str(folder),
        train_path=str(folder / "train.jsonl"),
        validation_path=str(folder / "validation.jsonl"),
        data_version=version,
        train_pairs=pairs[TRAIN],
        validation_queries=sum(1 for q in validation if positives[q.id]),
        source=source,
    )
    return dg.Output(
        data,
        metadata={
            **table_metadata(len(rows)),
            "train_pairs": pairs[TRAIN],
            "train_queries": len(train_queries),
            "validation_queries": data.validation_queries,
            "validation_pairs": pairs[VALIDATION],
            "train_documents": len({d for q in train_queries for d in q.relevant}),
            "validation_documents": len({d for q in validation for d in q.relevant}),
            "synthetic_queries": sum(1 for q in queries if q.synthetic),
            "negatives_per_pair": config.negatives_per_query,
            "positives_not_indexed": stats.positives_not_indexed,
            "pairs_dropped_without_negative": stats.dropped_without_negative,
            "source": source,
            "folder": dg.MetadataValue.path(str(folder)),
            "data_version": version,
            "duration_s": round(time.perf_counter() - started, 3),
            "preview": preview_table(_preview_columns(config.negatives_per_query), rows[:5], width=120),
        },
        data_version=dg.DataVersion(version),
    )


def _training_queries(
    context: dg.AssetExecutionContext, training: TrainingResource, llm: LLMResource, chunks: ParquetTable
) -> tuple[list[TrainingQuery], str]:
    """The judged queries of TRAINING_SET, or questions the LLM writes from indexed chunks."""
    if training.training_set:
        # A BEIR folder's train split only: its test split is what the pipeline is finally scored on.
        questions, source = load_eval_set(
            training.training_set, split="train", beir_doc_id_prefix=training.doc_id_prefix
        )
        return [TrainingQuery(q.id, q.question, q.relevant) for q in questions], f"TRAINING_SET: {source}"
    picked = pick_chunks(list(chunks.iter_rows(columns=["chunk_id", "doc_id", "text"])), training.synthesize_questions)
    context.log.info(f"No TRAINING_SET: the LLM writes {len(picked)} questions from indexed chunks")
    replies = asyncio.run(answer_with(llm, context.log, question_prompts(picked), max_tokens=64))
    questions, problems = synthetic_questions(picked, replies)
    for problem in problems:
        context.log.warning(f"no synthetic question from {problem}")
    if not questions:
        raise TrainingDataError(
            f"the LLM wrote no usable question from {len(picked)} chunks ({problems[:1]}); set TRAINING_SET to "
            "a judged set or check the LLM (OPENAI_BASE_URL)"
        )
    return [
        TrainingQuery(q.id, q.question, q.relevant, synthetic=True, positive_text=q.reference_contexts[0])
        for q in questions
    ], f"{len(questions)} questions written by {llm.default_model} from indexed chunks (synthetic)"


# --- fine_tuned_model -------------------------------------------------------------------------------


class FineTuneConfig(dg.Config):
    """Hyper-parameters; the model's version is a hash of them, the data's version and the base model."""

    # Two passes at 5e-5: one pass at 2e-5 (26 steps on SciFact's train split) moved nDCG@10 by +0.019,
    # short of the +3 to +5 points published for supervised fine-tuning of small embedding models.
    epochs: float = 2.0
    # > 0 caps the optimiser steps whatever `epochs` says (a quick run).
    max_steps: int = -1
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_fraction: float = 0.1
    seed: int = 1


def gpu_step_tags() -> dict[str, Any]:
    """The GPU step's `dagster-k8s/config` when the job runs step-per-pod (TRAINING_EXECUTOR=k8s). Read
    when the code location loads: op tags are part of the definitions the executor reads."""
    if settings.value("TRAINING_EXECUTOR") != "k8s":
        return {}
    config = gpu_step_k8s_config(
        gpus=settings.value("TRAINING_K8S_GPUS"),
        node_selector=settings.value("TRAINING_K8S_NODE_SELECTOR") or {},
        tolerations=settings.value("TRAINING_K8S_TOLERATIONS") or [],
    )
    return {K8S_CONFIG_TAG: config}


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    owners=OWNERS,
    code_version="1",
    pool="gpu",
    op_tags=gpu_step_tags(),
)
def fine_tuned_model(
    context: dg.AssetExecutionContext,
    config: FineTuneConfig,
    training: TrainingResource,
    training_launcher: TrainingLauncherResource,
    embedding_model: EmbeddingModelResource,
    training_dataset: TrainingData,
) -> dg.Output[ModelCandidate]:
    """The embedding model fine-tuned on the training pairs, in the model store under a content version
    (data version + base model + hyper-parameters): the same inputs find the model already trained.

    Training runs in its own process through Dagster Pipes (sentence-transformers' trainer,
    MultipleNegativesRankingLoss with the mined negatives, no duplicate texts in a batch): on this
    machine, or in a Kubernetes pod on a GPU node (TRAINING_LAUNCHER=k8s). Its progress reaches the run
    log as it trains; a failed run leaves nothing in the store."""
    base_path = embedding_model.base_model_path
    params = config.model_dump()
    base = {"name": embedding_model.base_name, "config": folder_digest(base_path)}
    version = model_version(training_dataset.data_version, base, params)
    output = training.model_store_dir / version
    manifest = output / "training.json"
    if (output / "modules.json").exists():
        context.log.info(f"Model {version} is already in the model store ({output}): not trained again")
        metrics = json.loads(manifest.read_text()).get("metrics", {}) if manifest.exists() else {}
        reused = True
    else:
        extras = {
            "pairs_path": training_dataset.train_path,
            "base_model": str(base_path),
            "output_dir": str(output),
            "device": training_launcher.torch_device,
            **params,
        }
        context.log.info(
            f"Training {embedding_model.base_name} on {training_dataset.train_pairs} pairs "
            f"({training_launcher.kind} launcher, {training_launcher.torch_device}) into {output}"
        )
        invocation = training_launcher.run(context, extras)
        reported = invocation.get_materialize_result().metadata or {}
        metrics = {key: getattr(value, "value", value) for key, value in reported.items()}
        manifest.write_text(
            json.dumps(
                {
                    "version": version,
                    "data_version": training_dataset.data_version,
                    "base": base,
                    "params": params,
                    "metrics": metrics,
                },
                indent=1,
                sort_keys=True,
                default=str,
            )
        )
        reused = False
    candidate = ModelCandidate(
        version=version,
        path=str(output),
        name=fine_tuned_name(embedding_model.base_name, version),
        base_model=embedding_model.base_name,
        data_version=training_dataset.data_version,
        params=params,
        metrics=metrics,
    )
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return dg.Output(
        candidate,
        metadata={
            **numbers,
            "version": version,
            "model_path": dg.MetadataValue.path(str(output)),
            "model_bytes": sum(p.stat().st_size for p in output.rglob("*") if p.is_file()),
            "base_model": embedding_model.base_name,
            "training_data_version": training_dataset.data_version,
            "launcher": training_launcher.kind,
            "reused": reused,
            "params": dg.MetadataValue.json(params),
        },
        data_version=dg.DataVersion(version),
    )


# --- model_evaluation -------------------------------------------------------------------------------


def _model_at(embedding_model: EmbeddingModelResource, path: str, name: str) -> EmbeddingModelResource:
    """The model in folder `path`, called `name` in collection fingerprints, on the serving model's device
    and precision."""
    return EmbeddingModelResource(
        model=path,
        device=embedding_model.device,
        batch_size=embedding_model.batch_size,
        threads=embedding_model.threads,
        dtype=embedding_model.dtype,
        display_name=name,
    )


def _candidate_model(embedding_model: EmbeddingModelResource, candidate: ModelCandidate) -> EmbeddingModelResource:
    return _model_at(embedding_model, candidate.path, candidate.name)


def _build_and_verify(
    context: dg.AssetExecutionContext,
    store: Any,
    collection: str,
    model: EmbeddingModelResource,
    chunks: ParquetTable,
    serving: str | None,
) -> BuildStats:
    """`collection` brought up to date with `chunks` by `model` and checked; raises, leaving the alias on
    `serving`, when a check fails."""
    built = build_collection(store, collection, model.dimension, chunks, model.encode, context.log.info)
    problems = verify_collection(store, collection, model.dimension, chunks, model.encode)
    if problems:
        raise RuntimeError(
            f"the new index {collection} failed its checks, so the alias stays on {serving}: " + "; ".join(problems)
        )
    return built


def _read_validation(path: str) -> tuple[list[str], list[str], dict[str, dict[str, float]]]:
    ids, texts, qrels = [], [], {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                ids.append(row["id"])
                texts.append(row["query"])
                qrels[row["id"]] = row["relevant"]
    return ids, texts, qrels


def _score(store: Any, collection: str, ids: list[str], vectors: Any, qrels: dict, ks: tuple[int, ...]) -> dict:
    ranked = search_documents(store, collection, vectors, top_documents=max(ks))
    rankings = {qid: [doc for doc, _ in docs] for qid, docs in zip(ids, ranked, strict=True)}
    return retrieval_report(rankings, qrels, ks)


COMPARISON_COLUMNS = [
    dg.TableColumn("metric"),
    dg.TableColumn("deployed", "float"),
    dg.TableColumn("candidate", "float"),
    dg.TableColumn("change", "float"),
]


@dg.asset(
    group_name=GROUP,
    kinds={"qdrant", "pytorch"},
    owners=OWNERS,
    code_version="1",
    pool="qdrant",
)
def model_evaluation(
    context: dg.AssetExecutionContext,
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    training: TrainingResource,
    training_dataset: TrainingData,
    fine_tuned_model: ModelCandidate,
    document_chunks: ParquetTable,
) -> dg.Output[GateReport]:
    """The fine-tuned candidate against the deployed model on the validation split (never the test
    split): nDCG@10, recall@k and accuracy@k through the same document retrieval as
    `rag_quality_metrics`, each model searching its own index of the current chunks.

    The candidate's index is built here, beside the serving one, as the collection a deployment would
    switch to; when the gate fails it is dropped again. The gate itself is the blocking check below."""
    started = time.perf_counter()
    gate = training.gate()
    ks = tuple(sorted({*REPORTED_KS, gate.accuracy_k}))
    ids, texts, qrels = _read_validation(training_dataset.validation_path)
    store = qdrant.get_store(context.log)
    serving = qdrant.alias_target()
    deployed = _score(store, qdrant.alias, ids, embedding_model.encode(texts), qrels, ks)

    candidate_model = _candidate_model(embedding_model, fine_tuned_model)
    target = collection_name(
        qdrant.alias, collection_fingerprint(candidate_model.identity, document_chunks.attrs["chunking_fingerprint"])
    )
    context.log.info(f"Indexing the chunks with candidate {fine_tuned_model.version} into {target}")
    built = build_collection(
        store, target, candidate_model.dimension, document_chunks, candidate_model.encode, context.log.info
    )
    candidate = _score(store, target, ids, candidate_model.encode(texts), qrels, ks)
    failures = gate_failures(candidate, deployed, gate)
    dropped = False
    if failures and target != serving:
        store.drop_collection(target)  # never deployed: its disk is returned now
        dropped = True
    qdrant.close()
    report = GateReport(
        candidate=fine_tuned_model,
        candidate_collection=target,
        deployed_name=embedding_model.name,
        candidate_metrics=candidate,
        deployed_metrics=deployed,
        accuracy_k=gate.accuracy_k,
        passed=not failures,
        failures=failures,
    )
    shown = ["ndcg_at_10", "mrr_at_10", "recall_at_10", f"hit_rate_at_{gate.accuracy_k}", "recall_at_100"]
    comparison = [
        {
            "metric": name,
            "deployed": round(deployed[name], 4),
            "candidate": round(candidate[name], 4),
            "change": round(candidate[name] - deployed[name], 4),
        }
        for name in dict.fromkeys(shown)
    ]
    return dg.Output(
        report,
        metadata={
            **{f"candidate_{k}": round(v, 5) for k, v in candidate.items()},
            **{f"deployed_{k}": round(v, 5) for k, v in deployed.items()},
            "ndcg_at_10_gain": round(candidate["ndcg_at_10"] - deployed["ndcg_at_10"], 5),
            "gate_passed": not failures,
            "gate_failures": "\n".join(failures) or "none",
            "validation_queries": len(ids),
            "candidate_version": fine_tuned_model.version,
            "deployed_model": embedding_model.name,
            "candidate_collection": target,
            "candidate_collection_dropped": dropped,
            "chunks_embedded": built.embedded,
            "reindex_s": round(built.seconds, 3),
            "duration_s": round(time.perf_counter() - started, 3),
            "comparison": preview_table(COMPARISON_COLUMNS, comparison),
        },
    )


# --- deployed_model ---------------------------------------------------------------------------------


class DeployConfig(dg.Config):
    """`deploy` switches to the candidate that passed the gate; `rollback` switches back to the model it
    replaced (its collection is kept until the next deployment), and a second rollback undoes the first."""

    action: str = "deploy"


@dg.asset(
    group_name=GROUP,
    kinds={"qdrant"},
    owners=OWNERS,
    code_version="1",
    pool="qdrant",
)
def deployed_model(
    context: dg.AssetExecutionContext,
    config: DeployConfig,
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    training: TrainingResource,
    model_evaluation: GateReport,
    document_chunks: ParquetTable,
) -> dg.MaterializeResult:
    """The embedding model serving the knowledge base: a registry record (version, path, metrics, time,
    previous version) in the model store, and the collection alias switched to the model's index.

    The new index is brought up to date with the current chunks and checked like an ingestion (every
    chunk present, nothing stale, a chunk's own text finding it) before the alias moves in one atomic
    step, so searches never see a half-built index. Ingestion and evaluation then use the model by
    themselves. The replaced collection is kept for `rollback_embedding_model`."""
    if config.action not in ("deploy", "rollback"):
        raise ValueError(f"DeployConfig.action={config.action!r}: expected deploy or rollback")
    registry = training.registry()
    store = qdrant.get_store(context.log)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if config.action == "rollback":
        version, metadata = _roll_back(context, qdrant, store, embedding_model, registry, document_chunks, now)
    else:
        version, metadata = _deploy(
            context, qdrant, store, embedding_model, registry, model_evaluation, document_chunks, now
        )
    qdrant.close()
    return dg.MaterializeResult(
        metadata={**metadata, "registry": dg.MetadataValue.path(str(registry.path))},
        data_version=dg.DataVersion(f"{version}@{now}") if metadata["action"] != "unchanged" else None,
    )


def _roll_back(
    context: dg.AssetExecutionContext,
    qdrant: QdrantResource,
    store: Any,
    embedding_model: EmbeddingModelResource,
    registry: Registry,
    chunks: ParquetTable,
    now: str,
) -> tuple[str, dict[str, Any]]:
    """Back to the model the last deployment replaced: its kept collection, or, when that was dropped since
    (an ingestion that built a collection of its own after a chunking change), one rebuilt from the current
    chunks with that model and checked before the switch."""
    current, previous = registry.current, registry.previous
    if current is None or previous is None:
        raise RegistryError(f"nothing to roll back to: the model registry {registry.path} has no previous deployment")
    target, rebuilt = previous.collection, False
    if not store.collection_exists(target):
        name = (
            embedding_model.base_name
            if previous.version == "base"
            else fine_tuned_name(previous.base_model, previous.version)
        )
        model = _model_at(embedding_model, previous.model_path, name)
        target = collection_name(
            qdrant.alias, collection_fingerprint(model.identity, chunks.attrs["chunking_fingerprint"])
        )
        context.log.info(f"The collection of {previous.version} is gone: rebuilding it as {target}")
        _build_and_verify(context, store, target, model, chunks, serving=qdrant.alias_target())
        rebuilt = True
    qdrant.point_alias_at(target)
    restored, undone = registry.rollback(now, collection=target)
    context.log.info(
        f"Rolled back: alias '{qdrant.alias}' -> {restored.collection} ({restored.version}), replacing {undone.version}"
    )
    return restored.version, {
        "action": "rollback",
        "version": restored.version,
        "rolled_back_version": undone.version,
        "collection": restored.collection,
        "collection_rebuilt": rebuilt,
        "model_path": dg.MetadataValue.path(restored.model_path),
        "deployed_at": now,
    }


def _deploy(
    context: dg.AssetExecutionContext,
    qdrant: QdrantResource,
    store: Any,
    embedding_model: EmbeddingModelResource,
    registry: Registry,
    report: GateReport,
    chunks: ParquetTable,
    now: str,
) -> tuple[str, dict[str, Any]]:
    """To the candidate that passed the gate: its collection synced and checked, the alias switched, the
    registry record written, and every older collection of the alias dropped but the rollback target's."""
    candidate = report.candidate
    if not report.passed:
        # The blocking check stops this step in a run; this guards a selection that left the check out.
        raise RuntimeError(f"candidate {candidate.version} did not pass the gate: {'; '.join(report.failures)}")
    serving = qdrant.alias_target()
    current = registry.current
    if current is not None and current.version == candidate.version and serving == current.collection:
        context.log.info(f"Model {candidate.version} is already deployed")
        return candidate.version, {"action": "unchanged", "version": candidate.version}

    started = time.perf_counter()
    model = _candidate_model(embedding_model, candidate)
    built = _build_and_verify(context, store, report.candidate_collection, model, chunks, serving)
    previous = qdrant.point_alias_at(report.candidate_collection)
    reindex_s = time.perf_counter() - started
    deployment = Deployment(
        version=candidate.version,
        model_path=candidate.path,
        base_model=candidate.base_model,
        collection=report.candidate_collection,
        metrics={k: round(v, 5) for k, v in report.candidate_metrics.items()},
        deployed_at=now,
        previous_version=current.version if current else "base",
    )
    # On the first deployment the model it replaces is the configured base model, recorded as such.
    base = Deployment("base", str(embedding_model.base_model_path), embedding_model.base_name, previous or "")
    registry.deploy(deployment, replacing=None if current else base)
    kept = registry.previous
    dropped = superseded_collections(
        store.collections(), qdrant.alias, [report.candidate_collection, kept.collection if kept else previous]
    )
    for name in dropped:
        store.drop_collection(name)
    context.log.info(
        f"Deployed {candidate.version}: alias '{qdrant.alias}' -> {report.candidate_collection} (was {previous}); "
        f"rollback target {kept.version if kept else 'none'}"
    )
    shown = ("ndcg_at_10", "recall_at_10", f"hit_rate_at_{report.accuracy_k}")
    return candidate.version, {
        "action": "deploy",
        "version": candidate.version,
        "previous_version": deployment.previous_version,
        "collection": report.candidate_collection,
        "previous_collection": previous or "none",
        "collections_dropped": ", ".join(dropped) or "none",
        "model_path": dg.MetadataValue.path(candidate.path),
        "deployed_at": now,
        "chunks_embedded": built.embedded,
        "reindex_s": round(reindex_s, 3),
        **{f"validation_{k}": round(v, 5) for k, v in report.candidate_metrics.items() if k in shown},
        "record": dg.MetadataValue.json(asdict(deployment)),
    }

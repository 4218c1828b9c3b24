"""Fine-tuning the LLM that answers batch inference and RAG questions: instruction data -> a LoRA adapter
trained in its own process (here, or on a Kubernetes GPU) -> a blocking evaluation against the serving
model -> deployment to the embedded llama.cpp server (or a record of what to load on a remote endpoint),
with rollback."""

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from ai_assets.defs.training.assets import gpu_step_tags
from ai_assets.lib.metadata import preview_table, table_metadata
from ai_assets.lib.training.gate import exact_match, llm_gate_failures, normalise_answer
from ai_assets.lib.training.registry import Deployment, Registry, RegistryError, model_version, write_once
from ai_assets.lib.training.sft_data import (
    SftExample,
    content_version,
    dedupe,
    jsonl_text,
    read_sft_jsonl,
    split,
)
from ai_assets.lib.training.train_llm import ADAPTER_DIR, ALL_PROJECTIONS, LlmTrainingParams
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.llama_server import LlamaServer, bundled_gguf_path
from ai_assets.resources.llm import ADAPTER_GGUF, BASE_VERSION, LLMResource, fine_tuned_llm_name, served_llm_name
from ai_assets.resources.training import LLM_TRAINING_MODULE, LlmTrainingResource, TrainingLauncherResource

OWNERS = ["team:ml-platform"]
GROUP = "llm_training"


# --- the values passed between the steps -----------------------------------------------------------


@dataclass(frozen=True)
class SftData:
    """The files of one instruction set: content-addressed by `data_version`."""

    folder: str
    train_path: str
    validation_path: str
    data_version: str
    train_examples: int
    validation_examples: int
    source: str


@dataclass(frozen=True)
class LlmCandidate:
    """A fine-tuned adapter in the model store."""

    version: str
    path: str
    name: str  # what it answers as once deployed (`fine_tuned_llm_name`)
    base_model: str  # the base GGUF's file name
    data_version: str
    params: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class LlmGateReport:
    """The candidate against the serving model on the validation split, and the gate's verdict."""

    candidate: LlmCandidate
    serving_version: str
    candidate_exact_match: float
    serving_exact_match: float
    candidate_val_loss: float
    base_val_loss: float
    passed: bool
    failures: list[str] = field(default_factory=list)


# --- sft_dataset ------------------------------------------------------------------------------------


@dg.asset(group_name=GROUP, kinds={"python", "jsonl"}, owners=OWNERS, code_version="1")
def sft_dataset(
    context: dg.AssetExecutionContext, llm_training: LlmTrainingResource, data_folder: DataFolderResource
) -> dg.Output[SftData]:
    """Instruction examples to fine-tune the LLM on, and held-out validation examples.

    Read from LLM_TRAINING_SET (JSONL: `{"messages": [...]}` conversations or `{"prompt", "completion"}`
    pairs), else the bundled support-ticket routing set; every line is checked (an error names the
    file:line and the field). Prompts seen twice are kept once, and each prompt goes to one split by a
    hash of its text, so a prompt is never in both and a split does not move when data is added.
    Written as JSONL under a content version."""
    path = llm_training.examples_path()
    examples, dropped = dedupe(read_sft_jsonl(path))
    train, validation = split(examples, llm_training.fraction())
    version = content_version([*train, *validation])
    folder = write_once(
        data_folder.folder("training", "llm", version),
        # With their origin: an example the trainer refuses (too long) is named by the user's file:line.
        {
            "train.jsonl": jsonl_text(train, with_origin=True),
            "validation.jsonl": jsonl_text(validation, with_origin=True),
        },
    )
    source = "the bundled example set" if not llm_training.training_set else f"LLM_TRAINING_SET: {path}"
    context.log.info(
        f"{len(examples)} examples from {source} ({dropped} repeated prompts dropped): "
        f"{len(train)} train, {len(validation)} validation"
    )
    answers = {normalise_answer(example.answer) for example in examples}
    preview_columns = [dg.TableColumn("source"), dg.TableColumn("prompt"), dg.TableColumn("answer")]
    return dg.Output(
        SftData(
            folder=str(folder),
            train_path=str(folder / "train.jsonl"),
            validation_path=str(folder / "validation.jsonl"),
            data_version=version,
            train_examples=len(train),
            validation_examples=len(validation),
            source=source,
        ),
        metadata={
            **table_metadata(len(examples)),
            "train_examples": len(train),
            "validation_examples": len(validation),
            "duplicates_dropped": dropped,
            "synthetic_examples": sum(1 for e in examples if e.synthetic),
            "distinct_answers": len(answers),
            "source": source,
            "folder": dg.MetadataValue.path(str(folder)),
            "data_version": version,
            "preview": preview_table(
                preview_columns,
                [{"source": e.source, "prompt": e.prompt[-1][1], "answer": e.answer} for e in validation[:5]],
                width=120,
            ),
        },
        data_version=dg.DataVersion(version),
    )


# --- fine_tuned_llm ---------------------------------------------------------------------------------


class LlmFineTuneConfig(dg.Config):
    """Hyper-parameters; the adapter's version is a hash of them, the data's version and the base GGUF.

    120 steps of 4 at 5e-4 (about 3.5 passes over the bundled set, ~4.5 min on 2 CPU cores) took its
    held-out exact match from 0.0 to 0.85 (`bench/llm_finetune.py`)."""

    # The training script's own defaults, so a direct run of the script and a job run train alike.
    max_steps: int = LlmTrainingParams.max_steps
    batch_size: int = LlmTrainingParams.batch_size
    learning_rate: float = LlmTrainingParams.learning_rate
    warmup_fraction: float = LlmTrainingParams.warmup_fraction
    lora_r: int = LlmTrainingParams.lora_r
    lora_alpha: int = LlmTrainingParams.lora_alpha
    lora_dropout: float = LlmTrainingParams.lora_dropout
    target_modules: list[str] = list(ALL_PROJECTIONS)
    max_seq_len: int = LlmTrainingParams.max_seq_len
    seed: int = LlmTrainingParams.seed
    # Also write base + adapter merged into one transformers model (bf16, ~270 MB for SmolLM2-135M): for
    # servers that take a merged model rather than an adapter.
    write_merged: bool = False


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    owners=OWNERS,
    code_version="1",
    pool="gpu",
    op_tags=gpu_step_tags(),
)
def fine_tuned_llm(
    context: dg.AssetExecutionContext,
    config: LlmFineTuneConfig,
    llm_training: LlmTrainingResource,
    training_launcher: TrainingLauncherResource,
    sft_dataset: SftData,
) -> dg.Output[LlmCandidate]:
    """A LoRA adapter for SmolLM2-135M-Instruct (loaded from the bundled GGUF), trained on the training
    examples with the loss on the answers only, in the model store under a content version (data version
    + base GGUF + hyper-parameters): the same inputs find the adapter already trained.

    Training runs in its own process through Dagster Pipes (peft LoRA): on this machine, or in a
    Kubernetes pod on a GPU node (TRAINING_LAUNCHER=k8s). Progress (step, loss, tokens/s, ETA) reaches
    the run log as it trains. The adapter is written in peft's format (for vLLM's --lora-modules) and as a
    llama.cpp GGUF LoRA (for the embedded server); a failed run leaves nothing in the store."""
    base_gguf = bundled_gguf_path()
    params = config.model_dump()
    base = {"name": base_gguf.name, "digest": _file_digest(base_gguf)}
    version = model_version(sft_dataset.data_version, base, params)
    output = llm_training.model_store_dir / version
    manifest = output / "training.json"
    if (output / ADAPTER_GGUF).is_file() and manifest.is_file():
        context.log.info(f"Adapter {version} is already in the model store ({output}): not trained again")
        metrics = json.loads(manifest.read_text()).get("metrics", {})
        reused = True
    else:
        extras = {
            "train_path": sft_dataset.train_path,
            "validation_path": sft_dataset.validation_path,
            "base_gguf": str(base_gguf),
            "output_dir": str(output),
            "device": training_launcher.torch_device,
            **params,
        }
        context.log.info(
            f"Training a LoRA adapter on {sft_dataset.train_examples} examples ({training_launcher.kind} launcher, "
            f"{training_launcher.torch_device}) into {output}"
        )
        invocation = training_launcher.run(context, extras, module=LLM_TRAINING_MODULE)
        reported = invocation.get_materialize_result().metadata or {}
        metrics = {key: getattr(value, "value", value) for key, value in reported.items()}
        reused = False
    candidate = LlmCandidate(
        version=version,
        path=str(output),
        name=fine_tuned_llm_name(version),
        base_model=base_gguf.name,
        data_version=sft_dataset.data_version,
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
            "adapter_bytes": (output / ADAPTER_GGUF).stat().st_size,
            "base_model": base_gguf.name,
            "training_data_version": sft_dataset.data_version,
            "launcher": training_launcher.kind,
            "reused": reused,
            "params": dg.MetadataValue.json(params),
        },
        data_version=dg.DataVersion(version),
    )


# --- llm_evaluation ---------------------------------------------------------------------------------


def _embedded_server(llm: LLMResource, lora: Path | None, alias: str) -> LlamaServer:
    """A llama.cpp server of the bundled GGUF with `lora` applied (None: none), answering as `alias`, with
    the `llm` resource's embedded settings."""
    return LlamaServer(
        bundled_gguf_path(),
        alias=alias,
        n_ctx=llm.embedded_n_ctx,
        threads=llm.embedded_threads,
        command=llm.embedded_command,
        lora_path=lora,
    )


def _served_answers(llm: LLMResource, lora: Path | None, alias: str, examples: list[SftExample]) -> list[str]:
    """Each validation prompt's greedy answer from the base GGUF with `lora` (None: none) as the embedded
    llama.cpp server serves it: the chat template, sampling and adapter the users will get."""
    import openai

    longest = max(len(e.answer.split()) for e in examples)
    with _embedded_server(llm, lora, alias) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=2)
        answers = []
        for example in examples:
            reply = client.chat.completions.create(
                model=alias,
                messages=example.prompt_chat(),
                temperature=0.0,
                max_tokens=4 * longest + 8,  # a label task: a rambling answer is wrong whatever follows
            )
            answers.append(reply.choices[0].message.content or "")
        client.close()
    return answers


def _serving(registry: Registry, base_gguf: str) -> tuple[str, Path | None]:
    """(version, adapter) the embedded model serves now: the registry's current version, or the base."""
    current = registry.current
    if current is None or current.version == BASE_VERSION or current.base_model != base_gguf:
        return BASE_VERSION, None
    return current.version, Path(current.model_path) / ADAPTER_GGUF


ANSWER_COLUMNS = [
    dg.TableColumn("prompt"),
    dg.TableColumn("reference"),
    dg.TableColumn("serving"),
    dg.TableColumn("candidate"),
]


@dg.asset(group_name=GROUP, kinds={"llama.cpp"}, owners=OWNERS, code_version="1")
def llm_evaluation(
    context: dg.AssetExecutionContext,
    llm: LLMResource,
    llm_training: LlmTrainingResource,
    sft_dataset: SftData,
    fine_tuned_llm: LlmCandidate,
) -> dg.Output[LlmGateReport]:
    """The fine-tuned candidate against the serving model on the validation split: exact match of the
    answers each gives through the embedded llama.cpp server (the candidate as the GGUF adapter users
    would get), and the validation loss per answer token against the base model's, from training.

    The gate itself is the blocking check below; a candidate that is already the serving version passes
    it unchanged (a weekly run on unchanged data is not a failure)."""
    started = time.perf_counter()
    validation = read_sft_jsonl(Path(sft_dataset.validation_path))
    references = [e.answer for e in validation]
    registry = llm_training.registry()
    serving_version, serving_lora = _serving(registry, fine_tuned_llm.base_model)
    serving_name = served_llm_name(serving_version)
    context.log.info(f"Answering {len(validation)} validation prompts with the serving model ({serving_name})")
    serving_answers = _served_answers(llm, serving_lora, serving_name, validation)
    if serving_version == fine_tuned_llm.version:  # the same adapter: its answers are the ones just given
        candidate_answers = serving_answers
    else:
        context.log.info(f"Answering them with candidate {fine_tuned_llm.version}")
        candidate_adapter = Path(fine_tuned_llm.path) / ADAPTER_GGUF
        candidate_answers = _served_answers(llm, candidate_adapter, fine_tuned_llm.name, validation)
    candidate_em = exact_match(candidate_answers, references)
    serving_em = exact_match(serving_answers, references)
    metrics = fine_tuned_llm.metrics
    candidate_loss, base_loss = float(metrics["finetuned_val_loss"]), float(metrics["base_val_loss"])
    if serving_version == fine_tuned_llm.version:
        failures: list[str] = []
        context.log.info(f"Candidate {fine_tuned_llm.version} is the serving version already: nothing to compare")
    else:
        failures = llm_gate_failures(
            candidate_em, serving_em, candidate_loss, base_loss, llm_training.gate(), serving_name
        )
    report = LlmGateReport(
        candidate=fine_tuned_llm,
        serving_version=serving_version,
        candidate_exact_match=candidate_em,
        serving_exact_match=serving_em,
        candidate_val_loss=candidate_loss,
        base_val_loss=base_loss,
        passed=not failures,
        failures=failures,
    )
    rows = [
        {"prompt": e.prompt[-1][1], "reference": e.answer, "serving": s, "candidate": c}
        for e, s, c in zip(validation, serving_answers, candidate_answers, strict=True)
    ]
    return dg.Output(
        report,
        metadata={
            "candidate_exact_match": round(candidate_em, 5),
            "serving_exact_match": round(serving_em, 5),
            "exact_match_gain": round(candidate_em - serving_em, 5),
            "candidate_val_loss": round(candidate_loss, 5),
            "base_val_loss": round(base_loss, 5),
            "gate_passed": not failures,
            "gate_failures": "\n".join(failures) or "none",
            "validation_examples": len(validation),
            "candidate_version": fine_tuned_llm.version,
            "serving_model": serving_name,
            "duration_s": round(time.perf_counter() - started, 3),
            "answers": preview_table(ANSWER_COLUMNS, rows[:10], width=100),
        },
    )


# --- deployed_llm -----------------------------------------------------------------------------------


class LlmDeployConfig(dg.Config):
    """`deploy` switches to the candidate that passed the gate; `rollback` switches back to the version it
    replaced (the base model after the first deployment), and a second rollback undoes the first."""

    action: str = "deploy"


def _check_serves(llm: LLMResource, lora: Path | None, alias: str) -> None:
    """The embedded server starts with `lora` and answers (`LlamaServer` is ready only after a one-token
    completion): a broken adapter fails here, before the registry changes."""
    with _embedded_server(llm, lora, alias):
        pass


@dg.asset(group_name=GROUP, kinds={"llama.cpp"}, owners=OWNERS, code_version="1")
def deployed_llm(
    context: dg.AssetExecutionContext,
    config: LlmDeployConfig,
    llm: LLMResource,
    llm_training: LlmTrainingResource,
    llm_evaluation: LlmGateReport,
) -> dg.MaterializeResult:
    """The LLM version serving batch inference and RAG answers: a registry record (version, adapter,
    scores, time, previous version) in the model store's `llm` folder, written atomically.

    The embedded llama.cpp server reads it when it starts, so `inference_outputs` and the RAG answers use
    the deployed adapter without any other change, and their metadata names the version that answered.
    Before the record changes, the server is started once with the adapter and must answer. For a remote
    endpoint (OPENAI_BASE_URL) nothing is switched there: the record says which adapter to load and which
    model name to request (vLLM `--lora-modules`), then set OPENAI_MODEL to it."""
    if config.action not in ("deploy", "rollback"):
        raise ValueError(f"LlmDeployConfig.action={config.action!r}: expected deploy or rollback")
    registry = llm_training.registry()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    if config.action == "rollback":
        version, metadata = _roll_back_llm(context, llm, registry, now)
    else:
        version, metadata = _deploy_llm(context, llm, registry, llm_evaluation, now)
    served = served_llm_name(version)
    remote = {}
    if not llm.embedded:
        remote = {
            "endpoint": llm.endpoint,
            "remote_note": "not switched: load the adapter on the endpoint and set OPENAI_MODEL to served_model",
        }
        if version != BASE_VERSION:
            remote["vllm_lora_module"] = f"{served}={Path(metadata['model_path'].value) / ADAPTER_DIR}"
    return dg.MaterializeResult(
        metadata={
            **metadata,
            **remote,
            "served_model": served,
            "deploy_seconds": round(time.perf_counter() - started, 3),
            "registry": dg.MetadataValue.path(str(registry.path)),
        },
        data_version=dg.DataVersion(f"{version}@{now}") if metadata["action"] != "unchanged" else None,
    )


def _deploy_llm(
    context: dg.AssetExecutionContext, llm: LLMResource, registry: Registry, report: LlmGateReport, now: str
) -> tuple[str, dict[str, Any]]:
    candidate = report.candidate
    if not report.passed:
        # The blocking check stops this step in a run; this guards a selection that left the check out.
        raise RuntimeError(f"candidate {candidate.version} did not pass the gate: {'; '.join(report.failures)}")
    current = registry.current
    if current is not None and current.version == candidate.version:
        context.log.info(f"LLM adapter {candidate.version} is already deployed")
        return candidate.version, {
            "action": "unchanged",
            "version": candidate.version,
            "model_path": dg.MetadataValue.path(candidate.path),
        }
    adapter = Path(candidate.path) / ADAPTER_GGUF
    _check_serves(llm, adapter, candidate.name)
    deployment = Deployment(
        version=candidate.version,
        model_path=candidate.path,
        base_model=candidate.base_model,
        collection="",  # an LLM has no index: the server reads the adapter from `model_path`
        metrics={
            "exact_match": round(report.candidate_exact_match, 5),
            "val_loss": round(report.candidate_val_loss, 5),
        },
        deployed_at=now,
        previous_version=current.version if current else BASE_VERSION,
    )
    # On the first deployment the version it replaces is the bundled model itself, recorded as such.
    base_gguf = bundled_gguf_path()
    base = Deployment(BASE_VERSION, str(base_gguf), base_gguf.name, "")
    registry.deploy(deployment, replacing=None if current else base)
    context.log.info(
        f"Deployed LLM adapter {candidate.version} (was {deployment.previous_version}): the embedded server now "
        f"answers as {candidate.name}"
    )
    return candidate.version, {
        "action": "deploy",
        "version": candidate.version,
        "previous_version": deployment.previous_version,
        "model_path": dg.MetadataValue.path(candidate.path),
        "adapter": dg.MetadataValue.path(str(adapter)),
        "validation_exact_match": round(report.candidate_exact_match, 5),
        "deployed_at": now,
        "record": dg.MetadataValue.json(asdict(deployment)),
    }


def _roll_back_llm(
    context: dg.AssetExecutionContext, llm: LLMResource, registry: Registry, now: str
) -> tuple[str, dict[str, Any]]:
    current, previous = registry.current, registry.previous
    if current is None or previous is None:
        raise RegistryError(f"nothing to roll back to: the LLM registry {registry.path} has no previous deployment")
    adapter = None if previous.version == BASE_VERSION else Path(previous.model_path) / ADAPTER_GGUF
    name = served_llm_name(previous.version)
    if adapter is not None and not adapter.is_file():
        raise RegistryError(f"cannot roll back to {previous.version}: its adapter {adapter} is missing from the store")
    _check_serves(llm, adapter, name)
    restored, undone = registry.rollback(now)
    context.log.info(f"Rolled the LLM back to {restored.version}, replacing {undone.version}")
    return restored.version, {
        "action": "rollback",
        "version": restored.version,
        "rolled_back_version": undone.version,
        "model_path": dg.MetadataValue.path(restored.model_path),
        "deployed_at": now,
    }

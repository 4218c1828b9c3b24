"""Fine-tuning: what the embedding model is trained on and must score (`TrainingResource`), and where the
training process runs (`TrainingLauncherResource`: a local subprocess, or a Kubernetes pod on a GPU node).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_pipes import PIPES_PROTOCOL_VERSION_FIELD

from ai_assets.lib import settings
from ai_assets.lib.training.gate import Gate, LlmGate
from ai_assets.lib.training.registry import Registry
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.llm import llm_store_dir

TRAINING_MODULE = "ai_assets.lib.training.train_embeddings"
LLM_TRAINING_MODULE = "ai_assets.lib.training.train_llm"
# The instruction set the LLM is fine-tuned on when LLM_TRAINING_SET is unset (see its README).
BUNDLED_SFT_EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "sft_examples" / "examples.jsonl"
# Lines of the training process's own output kept for the error when it fails.
TAIL_LINES = 20


class TrainingResource(dg.ConfigurableResource):
    """The training data, the deployment gate and the model store.

    `training_set` (TRAINING_SET): a golden JSONL file or a BEIR folder whose `qrels/train.tsv` is used;
    empty = `synthesize_questions` (TRAINING_SYNTHESIZE) questions written by the LLM from indexed chunks.
    `doc_id_prefix` (TRAINING_DOC_ID_PREFIX): a BEIR corpus's document id prefix (its source name).
    `validation_fraction` (TRAINING_VALIDATION_FRACTION): the share of document groups held out.
    The gate: `min_accuracy` (TRAINING_MIN_ACCURACY) at `accuracy_k` (TRAINING_ACCURACY_K), and
    `min_improvement` (TRAINING_MIN_IMPROVEMENT) of nDCG@10 over the deployed model.
    `model_store` (TRAINING_MODEL_STORE): the models' folder; empty = `models` in the data folder.
    """

    data_folder: DataFolderResource
    training_set: str = ""
    doc_id_prefix: str = ""
    synthesize_questions: int = 64
    validation_fraction: str = "0.2"
    min_accuracy: str = "0.85"
    accuracy_k: int = 10
    min_improvement: str = "0.005"
    model_store: str = ""

    def fraction(self) -> float:
        return settings.parse(
            "TRAINING_VALIDATION_FRACTION", self.validation_fraction, field="TrainingResource.validation_fraction"
        )

    def gate(self) -> Gate:
        return Gate(
            min_accuracy=settings.parse(
                "TRAINING_MIN_ACCURACY", self.min_accuracy, field="TrainingResource.min_accuracy"
            ),
            accuracy_k=self.accuracy_k,
            min_improvement=settings.parse(
                "TRAINING_MIN_IMPROVEMENT", self.min_improvement, field="TrainingResource.min_improvement"
            ),
        )

    @property
    def model_store_dir(self) -> Path:
        if not self.model_store:
            return self.data_folder.folder("models")
        folder = settings.parse("TRAINING_MODEL_STORE", self.model_store, field="TrainingResource.model_store")
        return Path(folder).expanduser().resolve()

    def registry(self) -> Registry:
        return Registry(self.model_store_dir)


class LlmTrainingResource(dg.ConfigurableResource):
    """What the LLM is fine-tuned on and must score to be deployed.

    `training_set` (LLM_TRAINING_SET): a JSONL file of `{"messages": [...]}` conversations or
    `{"prompt", "completion"}` pairs; empty = the bundled example set (`ai_assets/data/sft_examples`).
    `validation_fraction` (LLM_VALIDATION_FRACTION): the share of prompts held out.
    The gate: `min_exact_match` (LLM_MIN_EXACT_MATCH) on the validation split, and `min_improvement`
    (LLM_MIN_IMPROVEMENT) of exact match over the serving model.
    `model_store` (TRAINING_MODEL_STORE): the models' folder, shared with the embedding model; the LLM's
    versions and registry are in its `llm` folder.
    """

    data_folder: DataFolderResource
    training_set: str = ""
    validation_fraction: str = "0.2"
    min_exact_match: str = "0.6"
    min_improvement: str = "0.01"
    model_store: str = ""

    def examples_path(self) -> Path:
        if not self.training_set:
            return BUNDLED_SFT_EXAMPLES
        text = settings.parse("LLM_TRAINING_SET", self.training_set, field="LlmTrainingResource.training_set")
        return Path(text).expanduser().resolve()

    def fraction(self) -> float:
        return settings.parse(
            "LLM_VALIDATION_FRACTION", self.validation_fraction, field="LlmTrainingResource.validation_fraction"
        )

    def gate(self) -> LlmGate:
        return LlmGate(
            min_exact_match=settings.parse(
                "LLM_MIN_EXACT_MATCH", self.min_exact_match, field="LlmTrainingResource.min_exact_match"
            ),
            min_improvement=settings.parse(
                "LLM_MIN_IMPROVEMENT", self.min_improvement, field="LlmTrainingResource.min_improvement"
            ),
        )

    @property
    def model_store_dir(self) -> Path:
        folder = llm_store_dir(self.model_store, self.data_folder, field="LlmTrainingResource.model_store")
        assert folder is not None  # a data folder is always given here
        return folder

    def registry(self) -> Registry:
        return Registry(self.model_store_dir)


class TrainingFailedError(RuntimeError):
    """The training process failed: the cause, and the last lines it wrote."""


def _failure(cause: str, tail: list[str]) -> TrainingFailedError:
    lines = "\n".join(f"  | {line}" for line in tail) if tail else "  (no output)"
    return TrainingFailedError(f"{cause}; nothing was deployed. Last lines of its output:\n{lines}")


class TrainingLauncherResource(dg.ConfigurableResource):
    """Runs a training script through Dagster Pipes: `ai_assets.lib.training.train_embeddings` for the
    embedding model, `ai_assets.lib.training.train_llm` for the LLM.

    `launcher` (TRAINING_LAUNCHER): `subprocess` runs it on this machine (or in this step's pod, when the
    k8s executor put the step on a GPU node); `k8s` launches it in a pod of its own with
    `dagster_k8s.PipesK8sClient`: `image` (TRAINING_K8S_IMAGE, this project's image), `namespace`,
    `service_account`, `gpus` (the `nvidia.com/gpu` limit), `node_selector`, `tolerations`, and the
    `volumes` / `volume_mounts` that give the pod the data folder and the model store at the same paths
    as here. `kubeconfig` (TRAINING_K8S_KUBECONFIG): empty = the in-cluster service account.
    `device` (TRAINING_DEVICE): the torch device the script trains on.
    """

    launcher: str = "subprocess"
    device: str = "cpu"
    image: str = ""
    namespace: str = "default"
    service_account: str = ""
    gpus: int = 1
    # JSON text, parsed when used (see `ai_assets.resources`).
    node_selector: str = "{}"
    tolerations: str = ""
    volumes: str = ""
    volume_mounts: str = ""
    kubeconfig: str = ""
    poll_interval_s: float = 2.0

    @property
    def kind(self) -> str:
        return settings.parse("TRAINING_LAUNCHER", self.launcher, field="TrainingLauncherResource.launcher")

    @property
    def torch_device(self) -> str:
        return settings.parse("TRAINING_DEVICE", self.device, field="TrainingLauncherResource.device")

    def command(self, module: str = TRAINING_MODULE) -> list[str]:
        return [sys.executable if self.kind == "subprocess" else "python", "-m", module]

    def run(
        self, context: dg.AssetExecutionContext, extras: dict[str, Any], module: str = TRAINING_MODULE
    ) -> dg.PipesClientCompletedInvocation:
        """Train with the script `module` and `extras` (its parameters); raises `TrainingFailedError` with
        the cause and the process's last lines when it fails."""
        if self.kind == "k8s":
            return self._run_k8s(context, extras, module)
        return self._run_subprocess(context, extras, module)

    # --- on this machine -------------------------------------------------------------------------

    def _run_subprocess(
        self, context: dg.AssetExecutionContext, extras: dict[str, Any], module: str
    ) -> dg.PipesClientCompletedInvocation:
        # `dg.PipesSubprocessClient` with the process's output kept: its error says only the exit code,
        # while a failed training's cause is in its last lines (a traceback, an OOM message).
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with dg.open_pipes_session(
            # The op context: Dagster's Pipes session reads attributes the asset context has deprecated.
            context=context.op_execution_context,
            extras=extras,
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=dg.PipesTempFileMessageReader(),
        ) as session:
            env = {**os.environ, **session.get_bootstrap_env_vars(), "PYTHONUNBUFFERED": "1"}
            process = subprocess.Popen(
                self.command(module), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
            assert process.stdout is not None

            def forward() -> None:
                for line in process.stdout:
                    sys.stderr.write(line)  # the step's captured output, as PipesSubprocessClient does
                    if line.strip():
                        tail.append(line.rstrip())

            reader = threading.Thread(target=forward, daemon=True)
            reader.start()
            try:
                code = process.wait()
            except BaseException:  # the step was interrupted: never leave the trainer running
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                raise
            reader.join(timeout=10)
            if code != 0:
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                raise _failure(f"the training process ({' '.join(self.command(module))}) {how}", list(tail))
        return dg.PipesClientCompletedInvocation(session)

    # --- on Kubernetes -----------------------------------------------------------------------------

    def pod_spec(self) -> dict[str, Any]:
        """The pod spec the training pod is built from (`PipesK8sClient.run(base_pod_spec=...)`)."""
        field = "TrainingLauncherResource"
        resources: dict[str, Any] = {}
        if self.gpus > 0:
            resources = {"limits": {"nvidia.com/gpu": str(self.gpus)}, "requests": {"nvidia.com/gpu": str(self.gpus)}}
        container: dict[str, Any] = {"name": "training", "resources": resources}
        mounts = settings.parse("TRAINING_K8S_VOLUME_MOUNTS", self.volume_mounts, field=f"{field}.volume_mounts")
        if mounts:
            container["volume_mounts"] = mounts
        spec: dict[str, Any] = {"containers": [container], "restart_policy": "Never"}
        if self.service_account:
            spec["service_account_name"] = settings.parse(
                "TRAINING_K8S_SERVICE_ACCOUNT", self.service_account, field=f"{field}.service_account"
            )
        selector = settings.parse("TRAINING_K8S_NODE_SELECTOR", self.node_selector, field=f"{field}.node_selector")
        if selector:
            spec["node_selector"] = selector
        tolerations = settings.parse("TRAINING_K8S_TOLERATIONS", self.tolerations, field=f"{field}.tolerations")
        if tolerations:
            spec["tolerations"] = tolerations
        volumes = settings.parse("TRAINING_K8S_VOLUMES", self.volumes, field=f"{field}.volumes")
        if volumes:
            spec["volumes"] = volumes
        return spec

    def pipes_client(self) -> Any:
        from dagster_k8s import PipesK8sClient

        if self.kubeconfig:
            return PipesK8sClient(kubeconfig_file=self._kubeconfig_file(), poll_interval=self.poll_interval_s)
        return PipesK8sClient(load_incluster_config=True, poll_interval=self.poll_interval_s)

    def _kubeconfig_file(self) -> str:
        return settings.parse("TRAINING_K8S_KUBECONFIG", self.kubeconfig, field="TrainingLauncherResource.kubeconfig")

    def _namespace(self) -> str:
        return settings.parse("TRAINING_K8S_NAMESPACE", self.namespace, field="TrainingLauncherResource.namespace")

    @contextmanager
    def _core_api(self) -> Iterator[Any]:
        """A `CoreV1Api` of the launcher's own, for what `PipesK8sClient` does not do: find the pod again,
        read why it failed, delete it. Its own configuration object: the client's lives in the
        `kubernetes` library's global default, which another resource may load differently."""
        import kubernetes

        configuration = kubernetes.client.Configuration()
        if self.kubeconfig:
            kubernetes.config.load_kube_config(config_file=self._kubeconfig_file(), client_configuration=configuration)
        else:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        with kubernetes.client.ApiClient(configuration) as api_client:
            yield kubernetes.client.CoreV1Api(api_client)

    def _run_k8s(
        self, context: dg.AssetExecutionContext, extras: dict[str, Any], module: str
    ) -> dg.PipesClientCompletedInvocation:
        if not self.image:
            raise ValueError("TRAINING_LAUNCHER=k8s needs TRAINING_K8S_IMAGE: the image the training pod runs")
        image = settings.parse("TRAINING_K8S_IMAGE", self.image, field="TrainingLauncherResource.image")
        namespace = self._namespace()
        client = self.pipes_client()
        # PipesK8sClient names the pod itself (a random suffix): this label finds it again, to say why it
        # failed and to delete it.
        launch_id = uuid.uuid4().hex
        with self._core_api() as core:
            try:
                return client.run(
                    # The op's context: dagster_k8s reads `run_id` and `op` from it, deprecated on the asset's.
                    context=context.op_execution_context,
                    extras=extras,
                    image=image,
                    command=self.command(module),
                    namespace=namespace,
                    env={"PYTHONUNBUFFERED": "1"},
                    base_pod_meta={"labels": {COMPONENT_LABEL: "fine-tuning", LAUNCH_LABEL: launch_id}},
                    base_pod_spec=self.pod_spec(),
                    # Training runs for hours: its logs are followed in the background, not read at the end.
                    enable_multi_container_logs=True,
                    # Deleted below, after its status and last lines are read; and the client's own delete
                    # would turn a pod deleted mid-run into a bare 404 that hides why the run failed.
                    delete_pod_on_completion=False,
                )
            except Exception as err:
                raise self._k8s_failure(core, namespace, launch_id, err) from err
            finally:  # also when the step is interrupted: never leave a GPU pod training for nobody
                self._delete_pods(context, core, namespace, launch_id)

    def _k8s_failure(self, core: Any, namespace: str, launch_id: str, err: Exception) -> TrainingFailedError:
        """`err` (from `PipesK8sClient.run`) as the cause Kubernetes reports, with the container's last lines."""
        from dagster_k8s.client import DagsterK8sError
        from kubernetes.client.exceptions import ApiException

        try:
            pods = core.list_namespaced_pod(namespace, label_selector=f"{LAUNCH_LABEL}={launch_id}").items
        except Exception as lookup:
            return _failure(
                f"the training pod failed: {_brief(err)} (its status could not be read: {_brief(lookup)})", []
            )
        if not pods:
            if isinstance(err, ApiException):  # creating it failed: the API server says why
                return _failure(f"Kubernetes refused the training pod: {_api_error(err)}", [])
            if isinstance(err, DagsterK8sError):  # it existed (the client waited on it), and is gone
                return _failure(
                    "the training pod was deleted before it finished (by a person, a node drain or the cluster "
                    "autoscaler); its log went with it, what it printed until then is in this step's stdout",
                    [],
                )
            return _failure(f"the training pod could not be launched: {_brief(err)}", [])
        pod = pods[0]
        container = _training_container_status(pod)
        cause = _pod_failure_cause(pod, container) or f"the training pod {pod.metadata.name} failed: {_brief(err)}"
        return _failure(cause, _log_tail(core, pod, container))

    @staticmethod
    def _delete_pods(context: dg.AssetExecutionContext, core: Any, namespace: str, launch_id: str) -> None:
        """Delete this launch's pod; one already gone is fine. A failure to delete is a warning: it must not
        hide the run's own result or error."""
        from kubernetes.client.exceptions import ApiException

        try:
            for pod in core.list_namespaced_pod(namespace, label_selector=f"{LAUNCH_LABEL}={launch_id}").items:
                try:
                    core.delete_namespaced_pod(pod.metadata.name, namespace)
                except ApiException as err:
                    if err.status != 404:
                        raise
        except Exception as err:
            context.log.warning(
                f"Could not delete the training pod (namespace {namespace}, label {LAUNCH_LABEL}={launch_id}); "
                f"delete it by hand: {_brief(err)}"
            )


# --- reading a failed pod --------------------------------------------------------------------------

# Labels of the training pod: what it is, and which launch made it.
COMPONENT_LABEL = "app.kubernetes.io/component"
LAUNCH_LABEL = "ai-assets/launch-id"
# Lines read from the end of a failed container's log: Dagster Pipes messages are dropped from them.
_LOG_READ_LINES = 200


def _brief(err: BaseException) -> str:
    """An error in one line: dagster_k8s appends whole pod dumps and logs to its messages."""
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:300]}"


def _api_error(err: Any) -> str:
    """An `ApiException` as the API server's own words (its Status message), e.g. a 422's invalid fields."""
    message = ""
    try:
        message = json.loads(err.body or "{}").get("message", "")
    except (TypeError, ValueError):
        message = str(err.body or "")
    return f"HTTP {err.status} {err.reason}" + (f": {message}" if message else "")


def _training_container_status(pod: Any) -> Any:
    """The status of the container the training runs in: the first one (PipesK8sClient's rule)."""
    statuses = (pod.status.container_statuses or []) if pod.status else []
    first = pod.spec.containers[0].name if pod.spec and pod.spec.containers else None
    return next((s for s in statuses if s.name == first), statuses[0] if statuses else None)


def _pod_failure_cause(pod: Any, container: Any) -> str | None:
    """Why the pod failed, in Kubernetes' words (the reason a person would search for), or None."""
    name = pod.metadata.name
    status = pod.status
    if status is not None and status.reason:  # the whole pod failed, e.g. Evicted for memory pressure
        return f"the training pod {name} was {status.reason}" + (f": {status.message}" if status.message else "")
    state = container.state if container is not None else None
    if state is not None and state.waiting is not None and state.waiting.reason:
        message = f" ({state.waiting.message})" if state.waiting.message else ""
        return f"the training pod {name} could not start its container: {state.waiting.reason}{message}"
    terminated = state.terminated if state is not None else None
    if terminated is not None and terminated.reason == "OOMKilled":
        return (
            f"the training container of pod {name} was OOMKilled (exit code {terminated.exit_code}): it ran out of "
            "host memory (the pod's limit or the node's, not the GPU's); lower the batch size or give it more memory"
        )
    if terminated is not None and terminated.exit_code != 0:
        message = f": {terminated.message}" if terminated.message else ""
        return (
            f"the training container of pod {name} exited with code {terminated.exit_code} "
            f"({terminated.reason or 'Error'}){message}"
        )
    return None


def _log_tail(core: Any, pod: Any, container: Any) -> list[str]:
    """The container's last `TAIL_LINES` lines of output, when its log can still be read."""
    state = container.state if container is not None else None
    if state is None or (state.running is None and state.terminated is None):
        return []  # it never ran
    try:
        raw = core.read_namespaced_pod_log(
            pod.metadata.name,
            pod.metadata.namespace,
            container=container.name,
            tail_lines=_LOG_READ_LINES,
            _preload_content=False,  # the log as text: the client would try to parse it as JSON
        ).data.decode("utf-8", "replace")
    except Exception:  # the cause is worth more than its tail: never fail while reading it
        return []
    return _readable_lines(raw.splitlines())[-TAIL_LINES:]


def _readable_lines(lines: list[str]) -> list[str]:
    """The log as a person reads it: Dagster Pipes' JSON messages dropped, except the text of its log
    messages (`context.log` in the training script); blank lines dropped."""
    readable = []
    for line in lines:
        if line.startswith("{") and PIPES_PROTOCOL_VERSION_FIELD in line:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and PIPES_PROTOCOL_VERSION_FIELD in message:
                if message.get("method") == "log":
                    readable.append(str((message.get("params") or {}).get("message", "")))
                continue
        if line.strip():
            readable.append(line.rstrip())
    return readable

"""The training launcher on Kubernetes, without a cluster: `TrainingLauncherResource(launcher="k8s")` drives the
real `dagster_k8s.PipesK8sClient` and `kubernetes` client against a fake API server (`fake_kube.FakeKube`) whose
kubelet runs the pod's command on this machine; and the manifests dagster_k8s builds from this project's
configuration validate against the Kubernetes schema.

The "image" runs a small Dagster Pipes script instead of the real trainer (which would load the embedding
model): the pod body still carries production's command, `python -m ai_assets.lib.training.train_embeddings`.
"""

import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.pipes import build_pod_body

from ai_assets.lib.training.k8s import K8S_CONFIG_TAG, gpu_step_k8s_config
from ai_assets.resources.training import (
    LAUNCH_LABEL,
    LLM_TRAINING_MODULE,
    TAIL_LINES,
    TRAINING_MODULE,
    TrainingFailedError,
    TrainingLauncherResource,
)
from ai_assets_tests.training.fake_kube import KUBERNETES_VERSION, FakeKube, default_local_command

# What the "image" runs as the training module: Pipes in and out, a loss per step, and the ways a trainer fails.
TRAINER_STUB = """
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    mode = pipes.get_extra("mode")
    pipes.log.info(f"training on {pipes.get_extra('device')} ({mode})")
    for step in range(30):
        print(f"step {step} loss {1 / (step + 1):.4f}", flush=True)
    if mode == "hang":
        print("allocating the optimizer state", flush=True)
        time.sleep(300)  # longer than the fake waits for a follower before it deletes the pod
    if mode == "crash":
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    pipes.report_asset_materialization(metadata={"final_loss": 0.0333, "steps": 30})
"""

A100 = {"nvidia.com/gpu.product": "A100-SXM4-80GB"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
# One PVC holds the data folder and, below it, the model store: the pod sees them at this machine's paths.
VOLUMES = [{"name": "ai-assets-data", "persistentVolumeClaim": {"claimName": "ai-assets-data"}}]
VOLUME_MOUNTS = [
    {"name": "ai-assets-data", "mountPath": "/srv/ai-assets/.data"},
    {"name": "ai-assets-data", "mountPath": "/srv/ai-assets/models", "subPath": "models"},
]


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[FakeKube]:
    """The fake API server; its image's training module is `TRAINER_STUB`."""
    stub = tmp_path / "trainer_stub.py"
    stub.write_text(TRAINER_STUB)
    workdir = tmp_path / "kubelet"
    workdir.mkdir()
    fake = FakeKube(workdir)

    def local_command(argv: list[str]) -> list[str]:
        if argv in (["python", "-m", TRAINING_MODULE], ["python", "-m", LLM_TRAINING_MODULE]):
            return [sys.executable, str(stub)]
        return default_local_command(argv)

    fake.local_command = local_command
    with fake.serve():
        yield fake


def k8s_launcher(fake: FakeKube, tmp_path: Path, **fields: Any) -> TrainingLauncherResource:
    """A launcher configured as for an A100 node pool, talking to `fake`."""
    config: dict[str, Any] = {
        "launcher": "k8s",
        "device": "cuda",
        "image": "ai-assets:test",
        "namespace": "ml",
        "service_account": "trainer",
        "gpus": 2,
        "node_selector": json.dumps(A100),
        "tolerations": json.dumps(GPU_TOLERATIONS),
        "volumes": json.dumps(VOLUMES),
        "volume_mounts": json.dumps(VOLUME_MOUNTS),
        "kubeconfig": str(fake.kubeconfig(tmp_path / "kubeconfig")),
        "poll_interval_s": 0.05,
        **fields,
    }
    return TrainingLauncherResource(**config)


class TrainConfig(dg.Config):
    mode: str = "ok"


@dg.asset
def trained_model(
    context: dg.AssetExecutionContext, config: TrainConfig, training_launcher: TrainingLauncherResource
) -> dg.MaterializeResult:
    """Trains through the launcher, as `fine_tuned_model` does."""
    extras = {"mode": config.mode, "device": training_launcher.torch_device}
    return training_launcher.run(context, extras).get_materialize_result()


def materialize(
    launcher: TrainingLauncherResource, instance: dg.DagsterInstance, mode: str = "ok"
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [trained_model],
        resources={"training_launcher": launcher},
        instance=instance,
        run_config=dg.RunConfig(ops={"trained_model": TrainConfig(mode=mode)}),
    )


def train_and_fail(launcher: TrainingLauncherResource, instance: dg.DagsterInstance, mode: str) -> str:
    """The message of the `TrainingFailedError` that fails the asset."""
    with pytest.raises(TrainingFailedError) as failed:
        materialize(launcher, instance, mode)
    return str(failed.value)


# --- through the fake API server -------------------------------------------------------------------


@pytest.mark.slow
def test_training_pod_runs_and_reports_through_pipes(
    fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    result = materialize(k8s_launcher(fake_kube, tmp_path), instance)

    assert result.success
    [materialization] = result.asset_materializations_for_node("trained_model")
    assert materialization.metadata["final_loss"].value == pytest.approx(0.0333)
    assert materialization.metadata["steps"].value == 30
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any("training on cuda (ok)" in message for message in messages)

    # What reached "Kubernetes": the pod production would create.
    [create] = fake_kube.requests_to("POST", r"/pods$")
    assert create.path == "/api/v1/namespaces/ml/pods"
    [pod] = fake_kube.created_pods
    spec = pod["spec"]
    [container] = spec["containers"]
    assert container["image"] == "ai-assets:test"
    assert container["command"] == ["python", "-m", TRAINING_MODULE]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["volumeMounts"] == VOLUME_MOUNTS
    assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container["env"]
    assert "DAGSTER_PIPES_CONTEXT" in {variable["name"] for variable in container["env"]}
    assert spec["nodeSelector"] == A100
    assert spec["tolerations"] == GPU_TOLERATIONS
    assert spec["serviceAccountName"] == "trainer"
    assert spec["volumes"] == VOLUMES
    assert spec["restartPolicy"] == "Never"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "fine-tuning"
    # Deleted once finished, by the launcher (the client's own delete is off).
    assert fake_kube.pod_names() == []
    [delete] = fake_kube.requests_to("DELETE", r"/pods/")
    assert delete.path == f"/api/v1/namespaces/ml/pods/{pod['metadata']['name']}"


@dg.asset
def trained_llm(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource) -> dg.MaterializeResult:
    """Trains through the launcher, as `fine_tuned_llm` does."""
    extras = {"mode": "ok", "device": training_launcher.torch_device}
    return training_launcher.run(context, extras, module=LLM_TRAINING_MODULE).get_materialize_result()


@pytest.mark.slow
def test_the_llm_trainer_runs_in_the_same_kind_of_pod(
    fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    launcher = k8s_launcher(fake_kube, tmp_path)
    result = dg.materialize([trained_llm], resources={"training_launcher": launcher}, instance=instance)
    assert result.success
    [materialization] = result.asset_materializations_for_node("trained_llm")
    assert materialization.metadata["steps"].value == 30
    [pod] = fake_kube.created_pods
    [container] = pod["spec"]["containers"]
    # The LLM's script, with the GPUs, node pool, tolerations and volumes of the embedding trainer's pod.
    assert container["command"] == ["python", "-m", LLM_TRAINING_MODULE]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["volumeMounts"] == VOLUME_MOUNTS
    assert pod["spec"]["nodeSelector"] == A100 and pod["spec"]["tolerations"] == GPU_TOLERATIONS
    assert fake_kube.pod_names() == []


@pytest.mark.slow
def test_image_pull_error_names_the_cause(fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    fake_kube.faults.image_pull_error = True

    message = train_and_fail(
        k8s_launcher(fake_kube, tmp_path, image="registry.example.com/ai-assets:nope"), instance, "ok"
    )

    assert "could not start its container: ErrImagePull" in message or "ImagePullBackOff" in message
    assert "registry.example.com/ai-assets:nope" in message
    assert "(no output)" in message  # it never ran
    assert fake_kube.pod_names() == []  # not left waiting for an image forever


@pytest.mark.slow
def test_oom_killed_pod_names_the_cause_and_keeps_the_last_lines(
    fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    fake_kube.faults.oom_kill_after = "allocating the optimizer state"

    message = train_and_fail(k8s_launcher(fake_kube, tmp_path), instance, "hang")

    assert "OOMKilled" in message
    assert "exit code 137" in message
    tail = [line for line in message.splitlines() if line.startswith("  | ")]
    assert len(tail) == TAIL_LINES
    assert tail[-1] == "  | allocating the optimizer state"
    assert "  | step 29 loss 0.0333" in tail
    assert not any("__dagster_pipes_version" in line for line in tail)  # Pipes' own messages are not output
    assert fake_kube.pod_names() == []


@pytest.mark.slow
def test_pod_deleted_mid_run_names_the_cause(fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    fake_kube.faults.delete_after = "allocating the optimizer state"

    message = train_and_fail(k8s_launcher(fake_kube, tmp_path), instance, "hang")

    assert "the training pod was deleted before it finished" in message
    assert "404" not in message and "Not Found" not in message
    # Nobody asked the API to delete it again: no 404 from a clean-up to hide the cause.
    assert fake_kube.requests_to("DELETE", r"/pods/") == []


@pytest.mark.slow
def test_failed_training_names_the_exit_code_and_shows_the_traceback(
    fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    message = train_and_fail(k8s_launcher(fake_kube, tmp_path), instance, "crash")

    assert "exited with code 1 (Error)" in message
    assert "  | RuntimeError: CUDA error: an illegal memory access was encountered" in message
    assert fake_kube.pod_names() == []


@pytest.mark.slow
def test_invalid_pod_is_refused_with_the_api_servers_reason(
    fake_kube: FakeKube, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    # TRAINING_K8S_VOLUME_MOUNTS names a volume TRAINING_K8S_VOLUMES lacks: only the API server can tell.
    mounts = [*VOLUME_MOUNTS, {"name": "model-store", "mountPath": "/srv/ai-assets/store"}]

    message = train_and_fail(k8s_launcher(fake_kube, tmp_path, volume_mounts=json.dumps(mounts)), instance, "ok")

    assert "Kubernetes refused the training pod: HTTP 422" in message
    assert 'spec.containers[0].volumeMounts[2].name: Not found: "model-store"' in message
    assert fake_kube.created_pods == []


# --- step per pod: k8s_job_executor through the fake ----------------------------------------------


@dg.asset
def corpus_sizes() -> list[int]:
    return [3, 5, 8]


@dg.asset(op_tags={K8S_CONFIG_TAG: gpu_step_k8s_config(gpus=1, node_selector=A100, tolerations=GPU_TOLERATIONS)})
def doubled_sizes(corpus_sizes: list[int]) -> list[int]:
    """The "GPU step": its `dagster-k8s/config` tag puts its pod on an A100 node with a GPU reserved."""
    return [2 * size for size in corpus_sizes]


def two_step_k8s_job() -> dg.JobDefinition:
    """At module level: each step's pod (`dagster api execute_step`) imports it again."""
    from dagster_k8s import k8s_job_executor

    job = dg.define_asset_job("two_steps", executor_def=k8s_job_executor)
    return dg.Definitions(assets=[corpus_sizes, doubled_sizes], jobs=[job]).resolve_job_def("two_steps")


@pytest.mark.slow
def test_k8s_job_executor_runs_each_step_in_a_job_pod(fake_kube: FakeKube, tmp_path: Path) -> None:
    kubeconfig = str(fake_kube.kubeconfig(tmp_path / "kubeconfig"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    # k8s_job_executor reads DAGSTER_HOME and the instance ConfigMap from the instance's K8sRunLauncher.
    run_launcher = {
        "module": "dagster_k8s",
        "class": "K8sRunLauncher",
        "config": {
            "service_account_name": "dagster",
            "instance_config_map": "dagster-instance",
            "dagster_home": str(home),
            "job_image": "ai-assets:test",
            "load_incluster_config": False,
            "kubeconfig_file": kubeconfig,
            "job_namespace": "dagster",
        },
    }
    executor_config = {
        "job_namespace": "dagster",
        "job_image": "ai-assets:test",
        "load_incluster_config": False,
        "kubeconfig_file": kubeconfig,
    }
    with dg.instance_for_test(temp_dir=str(home), overrides={"run_launcher": run_launcher}) as instance:
        with dg.execute_job(
            dg.reconstructable(two_step_k8s_job),
            instance=instance,
            run_config={"execution": {"config": executor_config}},
        ) as result:
            assert result.success
            materialized = {event.asset_key for event in result.get_asset_materialization_events()}
            assert materialized == {dg.AssetKey("corpus_sizes"), dg.AssetKey("doubled_sizes")}
    # Written by the second step's pod, which read the first one's output from the same storage.
    assert pickle.loads((home / "storage" / "doubled_sizes").read_bytes()) == [6, 10, 16]

    # One Job per step, each run by its own pod; the GPU step's carries its tag's placement.
    jobs = {job["metadata"]["labels"]["dagster/op"]: job for job in fake_kube.created_jobs}
    assert sorted(jobs) == ["corpus_sizes", "doubled_sizes"]
    assert [r.path for r in fake_kube.requests_to("POST", r"/jobs$")] == ["/apis/batch/v1/namespaces/dagster/jobs"] * 2
    gpu_spec = jobs["doubled_sizes"]["spec"]["template"]["spec"]
    assert gpu_spec["containers"][0]["args"] == ["dagster", "api", "execute_step"]
    assert gpu_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_spec["nodeSelector"] == A100
    assert gpu_spec["tolerations"] == GPU_TOLERATIONS
    cpu_spec = jobs["corpus_sizes"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_spec and "nvidia.com/gpu" not in json.dumps(cpu_spec)
    assert len(fake_kube.created_pods) == 2


# --- manifests against the Kubernetes schema -------------------------------------------------------


def as_manifest(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    """A client model as the JSON the API server receives (camelCase, no None), with its kind."""
    body = kubernetes.client.ApiClient().sanitize_for_serialization(obj)
    return {"apiVersion": api_version, "kind": kind, **body}


def test_training_pod_manifest_validates_for_an_a100_node_pool() -> None:
    launcher = TrainingLauncherResource(
        launcher="k8s",
        image="registry.example.com/ai-assets:1.4.0",
        namespace="ml",
        service_account="trainer",
        gpus=4,
        node_selector=json.dumps(A100),
        tolerations=json.dumps(GPU_TOLERATIONS),
        volumes=json.dumps(VOLUMES),
        volume_mounts=json.dumps(VOLUME_MOUNTS),
    )
    pod = build_pod_body(
        pod_name="dagster-0d4b2a1c-7f3e-4b-fine-tuned-model-0123456789",
        image=launcher.image,
        command=launcher.command(),
        env_vars={"DAGSTER_PIPES_CONTEXT": "e30=", "PYTHONUNBUFFERED": "1"},
        base_pod_meta={"labels": {"app.kubernetes.io/component": "fine-tuning", LAUNCH_LABEL: "0" * 32}},
        base_pod_spec=launcher.pod_spec(),
    )
    manifest = as_manifest(pod, "v1", "Pod")

    assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert spec["nodeSelector"] == A100
    assert spec["tolerations"] == GPU_TOLERATIONS
    assert spec["volumes"] == VOLUMES
    # Strict validation is what catches a field Kubernetes would drop: a snake_case key, say.
    with pytest.raises(kubernetes_validate.ValidationError, match="node_selector"):
        kubernetes_validate.validate(
            {**manifest, "spec": {**spec, "node_selector": A100}}, KUBERNETES_VERSION, strict=True
        )


def test_gpu_step_job_manifest_validates_and_reserves_the_gpus() -> None:
    # The `dagster-k8s/config` tag of the GPU step, read back as k8s_job_executor reads op tags.
    tag = json.dumps(gpu_step_k8s_config(gpus=4, node_selector=A100, tolerations=GPU_TOLERATIONS))
    user_config = get_user_defined_k8s_config({K8S_CONFIG_TAG: tag})
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(
            job_image="registry.example.com/ai-assets:1.4.0",
            dagster_home="/opt/dagster/dagster_home",
            image_pull_policy="IfNotPresent",
            service_account_name="dagster",
            instance_config_map="dagster-instance",
            volumes=VOLUMES,
            volume_mounts=VOLUME_MOUNTS,
        ),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-3b1f0c9e2d7a4c5b8e6f",
        user_defined_k8s_config=user_config,
        pod_name="dagster-step-3b1f0c9e2d7a4c5b8e6f",
        component="step_worker",
        labels={"dagster/job": "fine_tuning", "dagster/op": "fine_tuned_model"},
    )
    manifest = as_manifest(job, "batch/v1", "Job")

    assert kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    spec = manifest["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert spec["nodeSelector"] == A100
    assert spec["tolerations"] == GPU_TOLERATIONS
    assert {"name": "ai-assets-data", "persistentVolumeClaim": {"claimName": "ai-assets-data"}} in spec["volumes"]

"""What the GPU training step asks of Kubernetes when the `fine_tuning` job runs step-per-pod
(`dagster_k8s.k8s_job_executor`): the `dagster-k8s/config` tag of that step, so its pod lands on a GPU
node with the GPUs reserved, while the CPU steps keep the executor's small defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["K8S_CONFIG_TAG", "gpu_step_k8s_config"]

K8S_CONFIG_TAG = "dagster-k8s/config"


def gpu_step_k8s_config(
    gpus: int,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, Any]],
    cpu: str = "4",
    memory: str = "32Gi",
) -> dict[str, Any]:
    """The `dagster-k8s/config` value of the GPU step: GPU limits, node selector and tolerations.

    The container asks for `cpu` and `memory` as well: a GPU node's other pods must not starve the data
    loader. With `gpus` 0 the step still gets the node selector and tolerations, without the GPU limit.
    """
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    if gpus > 0:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
    pod_spec: dict[str, Any] = {}
    if node_selector:
        pod_spec["node_selector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    return {"container_config": {"resources": resources}, "pod_spec_config": pod_spec}

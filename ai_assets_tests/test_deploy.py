"""The Kubernetes deployment, without Docker, Helm or a cluster: `deploy/Dockerfile`, its context
(`deploy/Dockerfile.dockerignore`), the Dagster chart's values (`deploy/helm/values.yaml`) and the
manifests beside them.

- The image: its pins are pyproject.toml's, every file it copies is in the build context and nothing
  private is, it runs as a numeric non-root user, and its command (the chart's, too) serves the code
  location, as the chart's readiness probe sees it.
- The values: every key is one the chart has (`ai_assets_tests/data/dagster_chart_values.schema.json`,
  transcribed from the chart's own schema), the instance they make is the repository's dagster.yaml
  (queue, pools, limits, monitoring, retries), the settings are valid, the image's paths and user match.
- The pods: the run pod the K8sRunLauncher makes from these values and the training pods the settings
  make validate against the Kubernetes schema (strict), and one real run goes through the
  K8sRunLauncher to a Job of the fake API server (`training/fake_kube.py`) whose pod runs
  `dagster api execute_run` here, and succeeds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._cli.api import ExecuteRunArgs
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id
from dagster_k8s.pipes import build_pod_body

from ai_assets.lib import settings
from ai_assets.lib.training.k8s import gpu_step_k8s_config
from ai_assets.resources import build_resources
from ai_assets.resources.training import TRAINING_MODULE, TrainingLauncherResource
from ai_assets.run_recovery.executor import multiprocess_executor
from ai_assets_tests.dagster_processes import free_port, wait_for
from ai_assets_tests.training.fake_kube import FakeKube

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
HELM = ROOT / "deploy" / "helm"
CHART_SCHEMA = Path(__file__).parent / "data" / "dagster_chart_values.schema.json"
VENV_BIN = Path(sys.executable).parent
# The newest Kubernetes whose schema kubernetes-validate ships: what a cluster built today runs.
NEWEST_KUBERNETES = kubernetes_validate.latest_version()
# The release and namespace of the README's `helm upgrade --install dagster ... --namespace dagster`.
RELEASE = NAMESPACE = "dagster"


# --- reading the Dockerfile ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, in the build stage that holds it."""

    stage: str
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The instructions, comments dropped (also between continuation lines, as BuildKit does)."""
    instructions: list[Instruction] = []
    stage, pending = "", ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args.strip()
        instructions.append(Instruction(stage, keyword.upper(), " ".join(args.split())))
    return instructions


def build_args() -> dict[str, str]:
    """Every `ARG NAME=default` of the Dockerfile."""
    return dict(i.args.split("=", 1) for i in dockerfile() if i.keyword == "ARG" and "=" in i.args)


def image_env() -> dict[str, str]:
    """The final image's ENV (`KEY=value` pairs; PATH unexpanded)."""
    env: dict[str, str] = {}
    final = dockerfile()[-1].stage
    for i in dockerfile():
        if i.keyword == "ENV" and i.stage == final:
            env.update(pair.split("=", 1) for pair in shlex.split(i.args))
    return env


def image_cmd() -> list[str]:
    [cmd] = [i for i in dockerfile() if i.keyword == "CMD"]
    return json.loads(cmd.args)


def pyproject_pin(package: str) -> str:
    """The exact version pyproject.toml pins `package` (extras ignored) to."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in dependencies:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package} exactly")


# --- the build context -----------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus `**`) as a regular expression on a path."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_build_context(path: str) -> bool:
    """Whether the file at `path` (relative to the repository root) reaches the build: the last pattern
    matching it or a folder above it decides, `!` re-including (BuildKit's rule)."""
    rules = [
        (line.startswith("!"), _ignore_regex(line.lstrip("!")))
        for line in (raw.strip() for raw in DOCKERIGNORE.read_text().splitlines())
        if line and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


def repository_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore: what a checkout would send as context."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [path for path in listed if (ROOT / path).is_file()]


# --- the chart's values ----------------------------------------------------------------------------
# Without `helm`, the chart's templates that turn these values into the instance and the run pods'
# configuration are mirrored below, from github.com/dagster-io/dagster: helm/dagster/templates/
# configmap-instance.yaml (835892b4), helpers/instance/_run-launcher.tpl (a07d616f) and _concurrency.tpl
# (99dc34fc), charts/dagster-user-deployments/templates/helpers/_helpers.tpl (dba87afb).


def values() -> dict[str, Any]:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def code_deployment() -> dict[str, Any]:
    [deployment] = values()["dagster-user-deployments"]["deployments"]
    return deployment


def chart_container_context() -> dict[str, Any]:
    """The `DAGSTER_CONTAINER_CONTEXT` the chart gives the code server, which it passes to every run it
    launches (`dagsterUserDeployments.k8sContainerContext` in the chart's user-deployments helpers)."""
    deployment = code_deployment()
    full_name = f"{RELEASE}-dagster-user-deployments"  # the subchart's name, prefixed by the release
    return {
        "k8s": {
            "image_pull_policy": deployment["image"]["pullPolicy"],
            "env_config_maps": [
                f"{full_name}-{deployment['name']}-user-env",
                *(c["name"] for c in deployment.get("envConfigMaps", [])),
            ],
            "env_secrets": [s["name"] for s in deployment.get("envSecrets", [])],
            "volume_mounts": deployment.get("volumeMounts", []),
            "volumes": deployment.get("volumes", []),
            "resources": deployment.get("resources", {}),
            "namespace": NAMESPACE,
            "service_account_name": values()["global"]["serviceAccountName"],
            "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
        }
    }


def chart_run_launcher_config() -> dict[str, Any]:
    """The `run_launcher.config` the chart writes into the instance (`dagsterYaml.runLauncher.k8s`)."""
    launcher = values()["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s_config = {
        re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), key): value
        for key, value in (launcher.get("runK8sConfig") or {}).items()
    }
    config: dict[str, Any] = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": values()["global"]["serviceAccountName"],
        "dagster_home": values()["global"]["dagsterHome"],
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values()["global"]["postgresqlSecretName"],
        "env_config_maps": [c["name"] for c in launcher["envConfigMaps"]],
        "env_secrets": [s["name"] for s in launcher["envSecrets"]],
        "env_vars": launcher["envVars"],
        "volume_mounts": launcher["volumeMounts"],
        "volumes": launcher["volumes"],
        "resources": launcher.get("resources"),
        "fail_pod_on_run_failure": bool(launcher.get("failPodOnRunFailure")),
        "run_k8s_config": run_k8s_config,
    }
    return {key: value for key, value in config.items() if value not in (None, [], {})}


def chart_instance_sections() -> dict[str, Any]:
    """The instance sections the chart renders from the values that dagster.yaml also sets
    (configmap-instance.yaml and its `_concurrency.tpl`), in dagster.yaml's own words."""
    daemon, concurrency = values()["dagsterDaemon"], values()["concurrency"]
    monitoring, retries = daemon["runMonitoring"], daemon["runRetries"]
    return {
        "concurrency": {
            "runs": {
                "max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"],
            },
            "pools": {
                "default_limit": concurrency["pools"]["defaultLimit"],
                "granularity": concurrency["pools"]["granularity"],
            },
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
        },
        "run_retries": {
            "enabled": retries["enabled"],
            "max_retries": retries["maxRetries"],
            "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"],
        },
        "telemetry": {"enabled": values()["telemetry"]["enabled"]},
        "sensors": {"use_threads": daemon["sensors"]["useThreads"], "num_workers": daemon["sensors"]["numWorkers"]},
        "schedules": {
            "use_threads": daemon["schedules"]["useThreads"],
            "num_workers": daemon["schedules"]["numWorkers"],
        },
    }


def training_launcher(monkeypatch: pytest.MonkeyPatch) -> TrainingLauncherResource:
    """The training launcher a run pod builds from the values' settings (and the defaults of the rest),
    through the code location's own resource definitions."""
    environ = dict(code_deployment()["env"])
    settings.apply_defaults(environ)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with dg.build_resources({"training_launcher": build_resources()["training_launcher"]}) as resources:
        return resources.training_launcher


def as_manifest(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    """A client model as the JSON the API server receives (camelCase, no None), with its kind."""
    body = kubernetes.client.ApiClient().sanitize_for_serialization(obj)
    return {"apiVersion": api_version, "kind": kind, **body}


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- the image -------------------------------------------------------------------------------------


def test_image_pins_are_pyprojects() -> None:
    args = build_args()
    assert args["TORCH_VERSION"] == pyproject_pin("torch")
    assert args["LLAMA_CPP_PYTHON_VERSION"] == pyproject_pin("llama-cpp-python")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"  # PyPI's wheel is the CUDA one
    runs = [i.args for i in dockerfile() if i.keyword == "RUN"]
    [torch] = [run for run in runs if "torch==" in run]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch and '"torch==${TORCH_VERSION}"' in torch
    [llama] = [run for run in runs if "llama-cpp-python" in run]
    # The portable build, or a node without the build machine's instructions dies with SIGILL.
    assert llama.startswith('CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install')
    assert '"llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}"' in llama
    # The project itself as a wheel, after both, so its dependencies find them installed.
    project = next(n for n, run in enumerate(runs) if run.startswith("pip install ."))
    assert runs.index(torch) < project and runs.index(llama) < project


def test_image_is_multi_stage_with_compilers_only_in_the_builder() -> None:
    instructions = dockerfile()
    stages = [i.args for i in instructions if i.keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    assert build_args()["PYTHON_IMAGE"] == "python:3.11-slim"
    installs = {i.stage: i.args for i in instructions if i.keyword == "RUN" and "apt-get install" in i.args}
    assert "build-essential" in installs["builder"] and "cmake" in installs["builder"]
    assert "build-essential" not in installs["runtime"] and "cmake" not in installs["runtime"]
    assert "libgomp1" in installs["runtime"]  # llama.cpp's CPU backend links OpenMP
    runtime_copies = [i.args for i in instructions if i.stage == "runtime" and i.keyword == "COPY"]
    assert runtime_copies == ["--from=builder /opt/venv /opt/venv"]


def test_every_copied_file_is_in_the_build_context_and_nothing_private_is() -> None:
    files = repository_files()
    sources = [
        source
        for i in dockerfile()
        if i.keyword == "COPY" and not i.args.startswith("--from=")
        for source in i.args.split()[:-1]
    ]
    assert sources == ["pyproject.toml", "README.md", "ai_assets"]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        needed = [path for path in files if path == source or path.startswith(f"{source}/")]
        assert needed, source
        left_out = [path for path in needed if not in_build_context(path)]
        assert left_out == [], f"COPY {source} would miss files the dockerignore excludes: {left_out[:5]}"
    # The package data the wheel must carry (pyproject's package-data), e.g. the bundled corpus.
    assert any(path.startswith("ai_assets/data/sample_corpus/") and in_build_context(path) for path in files)
    for private in (".venv/bin/python", ".data/qdrant/x", ".git/HEAD", "history/runs.db", "storage/x"):
        assert not in_build_context(private), private
    for leftover in ("ai_assets/__pycache__/definitions.cpython-311.pyc", "ai_assets.egg-info/PKG-INFO"):
        assert not in_build_context(leftover), leftover
    assert not any(in_build_context(path) for path in files if path.startswith(("ai_assets_tests/", "bench/")))


def test_image_runs_as_a_numeric_non_root_user_with_the_charts_paths() -> None:
    instructions = dockerfile()
    final = instructions[-1].stage
    [user] = [i.args for i in instructions if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), "runAsNonRoot can only verify a numeric user"
    assert [i.stage for i in instructions if i.keyword == "USER"] == [final]
    assert not any(i.keyword == "ENTRYPOINT" for i in instructions), "the chart's args would be appended to it"
    env = image_env()
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["DAGSTER_HOME"] == values()["global"]["dagsterHome"]
    [volume] = [json.loads(i.args) for i in instructions if i.keyword == "VOLUME"]
    assert volume == [env["AI_ASSETS_DATA_DIR"]]
    deployment = code_deployment()
    assert deployment["env"]["AI_ASSETS_DATA_DIR"] == env["AI_ASSETS_DATA_DIR"]
    assert [m["mountPath"] for m in deployment["volumeMounts"]] == [env["AI_ASSETS_DATA_DIR"]]
    for security in (
        deployment["podSecurityContext"],
        values()["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["securityContext"],
    ):
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (int(uid), int(gid), int(gid))
    [expose] = [i.args for i in instructions if i.keyword == "EXPOSE"]
    assert int(expose) == deployment["port"]


def test_the_charts_command_is_the_images() -> None:
    deployment = code_deployment()
    # deployment-user.yaml: args ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", port, *codeServerArgs]
    # (`dagsterApiGrpcArgs` would win over codeServerArgs: it must be absent).
    assert "dagsterApiGrpcArgs" not in deployment
    chart_args = ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", str(deployment["port"])]
    assert image_cmd() == [*chart_args, *deployment["codeServerArgs"]]
    assert deployment["codeServerArgs"] == ["-m", "ai_assets.definitions"]
    assert (VENV_BIN / image_cmd()[0]).is_file()


@pytest.mark.slow
def test_the_image_command_serves_the_code_location_to_the_charts_probe(tmp_path: Path) -> None:
    # The CMD with the image's environment (offline hub), on a free port; then the chart's readiness
    # probe, `dagster api grpc-health-check -p PORT`, until the code location has loaded.
    port = free_port()
    argv = image_cmd()
    argv[argv.index("-p") + 1] = str(port)
    env = {
        **os.environ,
        **{k: v for k, v in image_env().items() if k != "PATH"},
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "AI_ASSETS_DATA_DIR": str(tmp_path / "data"),
        "HF_HOME": str(tmp_path / "hf"),
    }
    (tmp_path / "dagster_home").mkdir()
    log = tmp_path / "code-server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([str(VENV_BIN / argv[0]), *argv[1:]], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        probes: list[subprocess.CompletedProcess[str]] = []

        def healthy() -> bool:
            assert server.poll() is None, f"the code server exited:\n{log.read_text()[-3000:]}"
            probes.append(
                subprocess.run(
                    [str(VENV_BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            )
            return probes[-1].returncode == 0

        wait_for(healthy, "the chart's readiness probe", 150, 1.0, lambda: probes[-1].stderr[-500:] if probes else "")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- the chart's values --------------------------------------------------------------------------


def test_values_use_only_keys_the_chart_has() -> None:
    validator = jsonschema.Draft7Validator(json.loads(CHART_SCHEMA.read_text()))
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values())]
    assert problems == []
    # The schema is closed where the chart would silently ignore a misspelt key.
    misspelt = values()
    misspelt["dagster-user-deployments"]["deployments"][0]["codeserverArgs"] = ["-m", "ai_assets.definitions"]
    misspelt["dagsterDaemon"]["runMonitoring"]["startTimeoutSecs"] = 180
    paths = {".".join(map(str, e.absolute_path)) for e in validator.iter_errors(misspelt)}
    assert paths == {"dagster-user-deployments.deployments.0", "dagsterDaemon.runMonitoring"}


def test_values_make_the_repositorys_instance() -> None:
    # The chart's instance has PostgreSQL storage and the K8sRunLauncher; the rest must be dagster.yaml.
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    rendered = chart_instance_sections()
    assert {key: instance[key] for key in rendered} == rendered
    assert instance["run_coordinator"]["class"] == values()["dagsterDaemon"]["runCoordinator"]["type"]
    # Limits in one place: the chart refuses them both under `concurrency` and in the coordinator.
    assert values()["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] == {}
    assert values()["concurrency"]["enabled"] is True


def test_values_postgres_is_the_production_instances() -> None:
    postgres = values()["postgresql"]
    assert postgres["enabled"] is False and values()["generatePostgresqlPasswordSecret"] is False
    assert postgres["postgresqlPassword"] == "", "the password belongs in the Secret, never in values"
    assert values()["global"]["postgresqlSecretName"]
    production = ROOT / "deploy" / "dagster.postgres.yaml"
    if production.exists():  # the same driver and connect timeout as the non-Kubernetes instance
        db = yaml.safe_load(production.read_text())["run_storage"]["config"]["postgres_db"]
        assert postgres["postgresqlScheme"] == db["scheme"]
        assert postgres["postgresqlParams"] == db["params"]
        # The chart's instance reads the password from this variable too.
        assert db["password"] == {"env": "DAGSTER_PG_PASSWORD"}


def test_values_settings_are_valid_and_hold_no_secret() -> None:
    env = code_deployment()["env"]
    unknown = sorted(set(env) - set(settings.SETTINGS))
    assert unknown == [], f"not settings of ai_assets (a misspelt name is silently ignored): {unknown}"
    problems, _ = settings.problems(env)
    assert problems == []
    assert not [name for name in env if name.endswith(("_API_KEY", "PASSWORD"))]
    secrets = {s["name"] for s in code_deployment()["envSecrets"]}
    launcher = values()["runLauncher"]["config"]["k8sRunLauncher"]
    assert secrets == {s["name"] for s in launcher["envSecrets"]}
    # Run pods get the same volume at the same path as the code server.
    assert launcher["volumes"] == code_deployment()["volumes"]
    assert launcher["volumeMounts"] == code_deployment()["volumeMounts"]


# --- the pods, against the Kubernetes schema -----------------------------------------------------


def test_training_pod_lands_on_a_gpu_node_with_the_data_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = training_launcher(monkeypatch)
    assert launcher.kind == "k8s" and launcher.torch_device == "cuda"
    pod = build_pod_body(
        pod_name="dagster-0d4b2a1c-7f3e-4b-fine-tuned-model-0123456789",
        image=launcher.image,
        command=launcher.command(TRAINING_MODULE),
        env_vars={"DAGSTER_PIPES_CONTEXT": "e30=", "PYTHONUNBUFFERED": "1"},
        base_pod_meta={"labels": {"app.kubernetes.io/component": "fine-tuning"}},
        base_pod_spec=launcher.pod_spec(),
    )
    manifest = as_manifest(pod, "v1", "Pod")
    assert kubernetes_validate.validate(manifest, NEWEST_KUBERNETES, strict=True)
    spec = manifest["spec"]
    [container] = spec["containers"]
    assert container["image"].endswith("-cuda")  # the CUDA variant of the image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    # The same claim, at the same path, as the run pod that launched it.
    assert spec["volumes"] == code_deployment()["volumes"]
    assert container["volumeMounts"] == code_deployment()["volumeMounts"]
    # TRAINING_EXECUTOR=k8s instead: the GPU step's Job asks for the same nodes.
    step = gpu_step_k8s_config(gpus=launcher.gpus, node_selector=spec["nodeSelector"], tolerations=spec["tolerations"])
    assert step["pod_spec_config"] == {"node_selector": spec["nodeSelector"], "tolerations": spec["tolerations"]}


def run_launcher_for(kubeconfig: Path, **overrides: Any) -> K8sRunLauncher:
    """The K8sRunLauncher the chart configures, talking to the cluster of `kubeconfig`."""
    config = {**chart_run_launcher_config(), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    return K8sRunLauncher(**{**config, **overrides})


@dg.asset(pool="gpu")
def pool_probe() -> dg.MaterializeResult:
    """Claims a slot of the `gpu` pool in the run pod, as the fine-tuning steps do."""
    return dg.MaterializeResult(metadata={"pid": os.getpid()})


def launched_job() -> dg.JobDefinition:
    """At module level: the run pod (`dagster api execute_run`) imports it again. The code location's
    executor: steps in subprocesses, pool slots of dead runs recovered."""
    job = dg.define_asset_job("launched_by_k8s", executor_def=multiprocess_executor.configured({"max_concurrent": 2}))
    return dg.Definitions(assets=[pool_probe], jobs=[job]).resolve_job_def("launched_by_k8s")


def run_origin(image: str) -> Any:
    """The job's origin as the chart's code server reports it: its image and container context."""
    origin = dg.reconstructable(launched_job).get_python_origin()
    repository = origin.repository_origin._replace(container_image=image, container_context=chart_container_context())
    return origin._replace(repository_origin=repository)


def test_run_pod_manifest_validates(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    launcher = run_launcher_for(kubeconfig)
    run = dg.DagsterRun(job_name="launched_by_k8s", run_id="0d4b2a1c-7f3e-4b5a-9c8d-0123456789ab")
    run = run._replace(job_code_origin=run_origin("registry.example.com/ai-assets:0.1.0"))
    # What K8sRunLauncher._launch_k8s_job_with_args builds, short of sending it.
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image="registry.example.com/ai-assets:0.1.0", run_launcher=launcher),
        args=ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=None).get_command_args(),
        job_name=get_job_name_from_run_id(run.run_id),
        pod_name=get_job_name_from_run_id(run.run_id),
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
    )
    manifest = as_manifest(job, "batch/v1", "Job")
    assert kubernetes_validate.validate(manifest, NEWEST_KUBERNETES, strict=True)
    assert_run_pod(manifest)


def assert_run_pod(job: dict[str, Any]) -> None:
    """A run pod of these values: the image's user, the data volume deduplicated, settings and secrets."""
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert spec["serviceAccountName"] == values()["global"]["serviceAccountName"]
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    # Named by both the launcher and the code server's context: once in the pod, or it would be refused.
    assert [v["name"] for v in spec["volumes"]] == ["ai-assets-data"]
    assert container["volumeMounts"] == code_deployment()["volumeMounts"]
    sources = [next(iter(source.values()))["name"] for source in container["envFrom"]]
    assert f"{RELEASE}-dagster-user-deployments-ai-assets-user-env" in sources  # the settings
    assert "ai-assets-secrets" in sources
    password = {"secretKeyRef": {"name": values()["global"]["postgresqlSecretName"], "key": "postgresql-password"}}
    assert {"name": "DAGSTER_PG_PASSWORD", "valueFrom": password} in container["env"]
    # The run pod's own size: code server `resources` would travel in its context and replace it.
    assert "resources" not in code_deployment()
    assert container["resources"] == values()["runLauncher"]["config"]["k8sRunLauncher"]["resources"]


def test_the_data_volume_claim_validates_and_is_the_one_the_pods_mount() -> None:
    [claim] = yaml_documents(HELM / "pvc.yaml")
    assert kubernetes_validate.validate(claim, NEWEST_KUBERNETES, strict=True)
    [volume] = code_deployment()["volumes"]
    assert claim["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # run pods and training pods on several nodes
    # The chart's Role lets the run pods create the training pods in the release's namespace only.
    assert code_deployment()["env"]["TRAINING_K8S_NAMESPACE"] == NAMESPACE


# --- one run through the K8sRunLauncher and the fake API server ------------------------------------


@pytest.fixture
def fake_kube(tmp_path: Path) -> Iterator[FakeKube]:
    workdir = tmp_path / "kubelet"
    workdir.mkdir()
    fake = FakeKube(workdir)
    with fake.serve():
        yield fake


@pytest.mark.slow
def test_a_run_launched_by_the_k8s_run_launcher_succeeds(fake_kube: FakeKube, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    kubeconfig = fake_kube.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
    launcher_config = {
        **chart_run_launcher_config(),
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "dagster_home": str(home),
    }
    overrides = {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher_config},
        **chart_instance_sections(),
    }
    with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as instance:
        job = launched_job()
        run = instance.create_run_for_job(job_def=job, job_code_origin=run_origin("ai-assets:test"))
        # The K8sRunLauncher reads only the run: no workspace is needed to launch it.
        instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
        ended = wait_for(lambda: (r := instance.get_run_by_id(run.run_id)).is_finished and r, "the run to end", 150)
        status = ended.status
        messages = [record.user_message for record in instance.all_logs(run.run_id)]
        assert status == dg.DagsterRunStatus.SUCCESS, "\n".join(messages[-20:])
        [materialization] = [
            e.asset_materialization for e in instance.all_logs(run.run_id) if e.asset_materialization is not None
        ]
        # Materialized in the run pod's own process (the kubelet's), not in this one.
        assert materialization.metadata["pid"].value != os.getpid()
        # Run monitoring asks the launcher about the worker: the Job counts its pod succeeded once the
        # process has exited (moments after the run's last event).
        launcher = instance.run_launcher
        health = wait_for(
            lambda: (
                (h := launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))).status.name != "RUNNING"
                and h
            ),
            "the run pod to end",
            150,
        )
        assert health.status.name == "SUCCESS", health.msg
        # The step claimed its slot in the `gpu` pool, one slot by the values' default limit.
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    [created] = fake_kube.created_jobs
    assert fake_kube.requests_to("POST", r"/jobs$")[0].path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    job_manifest = {"apiVersion": "batch/v1", "kind": "Job", **created}
    assert kubernetes_validate.validate(job_manifest, NEWEST_KUBERNETES, strict=True)
    assert_run_pod(job_manifest)

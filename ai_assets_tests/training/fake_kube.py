"""A fake Kubernetes API server on 127.0.0.1, with a "kubelet" that runs each pod's command locally.

It serves what the real `kubernetes` client calls when `dagster_k8s.PipesK8sClient` launches a pod
and follows its logs, when `DagsterKubernetesClient.wait_for_pod` polls it, and when
`dagster_k8s.k8s_job_executor` runs steps as batch/v1 Jobs:

- pods: create (the body validated against the Kubernetes JSON schema, strict, and by the checks the
  schema lacks: names, label values, mounts naming a volume, GPU requests equal to limits; 422 Invalid
  otherwise, as the API server answers), list (`fieldSelector=metadata.name=...`, `labelSelector=k=v,...`), read,
  read status, delete; the log (`container`, `follow`, `timestamps`, `tailLines`, `sinceSeconds`),
  streamed in chunks while the container runs, each line `<RFC3339Nano timestamp> <text>`;
- events (`fieldSelector=involvedObject.name=...`): the Warning events a kubelet would record;
- jobs: create, read status, list, delete (with its pods); the job controller makes one pod per job
  (`backoffLimit` is not honoured: Dagster sets 0) and counts it succeeded or failed.

The kubelet runs the first container's `command` + `args` with its `env` as a local subprocess (see
`FakeKube.local_command`), its stdout and stderr as the container log, and reports the pod's phase and
the container's state as a kubelet does: waiting (ContainerCreating) → running, ready → terminated with
the exit code and the reason (Completed, Error, OOMKilled). `FakeKube.faults` injects the failures a
training pod meets on a real cluster: an image that cannot be pulled, the OOM killer, a deleted pod.

Every request is recorded (`FakeKube.requests`), and every accepted pod and job body as sent
(`FakeKube.created_pods`, `FakeKube.created_jobs`; a job's pod as its controller made it), so tests
assert on what reached "Kubernetes"."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate

# The API version the fake claims to be, and whose schema validates what it is sent.
KUBERNETES_VERSION = "1.30.0"
# A real API server's limits on names and labels (the JSON schema does not check them).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# How long the kubelet lingers in each start-up state, so that pollers see them.
_STATE_PAUSE_S = 0.05


@dataclass
class Faults:
    """Failures the kubelet injects into the pods created while they are set.

    `image_pull_error`: the image cannot be pulled; the container waits (ErrImagePull, then
    ImagePullBackOff) and never runs. `oom_kill_after`: once a log line contains this text, the process
    is SIGKILLed and reported OOMKilled (exit code 137), as the kernel's OOM killer in a container's
    cgroup does. `delete_after`: once a log line containing this text has been streamed to a log
    follower, the pod is deleted (its process killed, the pod gone from the API, its logs with it).
    """

    image_pull_error: bool = False
    oom_kill_after: str | None = None
    delete_after: str | None = None


@dataclass
class Request:
    """One request the fake received: its body parsed as JSON when it had one."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None


@dataclass
class _LogLine:
    timestamp_ns: int
    text: str


@dataclass
class _Pod:
    """A pod as the fake keeps it: the object the API serves, plus the kubelet's side of it."""

    obj: dict[str, Any]
    faults: Faults
    log: list[_LogLine] = field(default_factory=list)
    # The container has exited (or will never run): followers stop once they have sent every line.
    log_closed: bool = False
    deleted: bool = False
    process: subprocess.Popen[bytes] | None = None
    oom_killed: bool = False
    # The highest log index any follower has written to its client (for `Faults.delete_after`).
    streamed: int = -1
    # How often the pod was read back through a list or a get (for `Faults.delete_after`).
    polled: int = 0
    job: str | None = None

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.obj["metadata"]["namespace"]


class ApiError(Exception):
    """An error the fake answers with a `Status` object, as the API server does."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_nano(timestamp_ns: int) -> str:
    """The timestamp of a log line as the kubelet writes it: always nine fractional digits, so that every
    line's prefix has the same length (`dagster_k8s.pipes._process_log_stream` relies on it)."""
    seconds, nanos = divmod(timestamp_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def default_local_command(argv: list[str]) -> list[str]:
    """The command a container would run, as a process on this machine: the image's `python` and
    `dagster` are this interpreter's."""
    if not argv:
        raise ValueError("the container has no command: the fake kubelet cannot run an image's entrypoint")
    if argv[0] in ("python", "python3") or argv[0].endswith("/python"):
        return [sys.executable, *argv[1:]]
    if argv[0] == "dagster":
        return [sys.executable, "-m", "dagster", *argv[1:]]
    return list(argv)


def _flag(query: dict[str, str], name: str) -> bool:
    """A boolean query parameter as the API server (Go's strconv.ParseBool) reads it: the Python client
    sends `True`, not `true`."""
    return query.get(name, "false") in ("1", "t", "T", "true", "TRUE", "True")


def _selector(text: str) -> dict[str, str | None]:
    """`k=v,k2==v2,k3` → {k: v, k2: v2, k3: None (exists)}; other operators are refused."""
    terms: dict[str, str | None] = {}
    for term in filter(None, (part.strip() for part in text.split(","))):
        if "!=" in term or " in " in term or " notin " in term or term.startswith("!"):
            raise ApiError(400, "BadRequest", f"the fake API server does not support the selector {term!r}")
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        terms[key.strip()] = value.strip() if sep else None
    return terms


def _matches(obj: dict[str, Any], fields: dict[str, str | None], labels: dict[str, str | None]) -> bool:
    meta = obj["metadata"]
    known = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"]}
    for key, value in fields.items():
        if key not in known:
            raise ApiError(400, "BadRequest", f'"{key}" is not a known field selector: only "metadata.name"')
        if known[key] != value:
            return False
    have = meta.get("labels") or {}
    return all(key in have and (value is None or have[key] == value) for key, value in labels.items())


def _pod_spec_problems(spec: dict[str, Any], prefix: str) -> list[str]:
    """Checks the API server makes beyond the schema, in its words: every volume mount names a volume of
    the pod, and an extended resource (a GPU) is requested exactly as much as it is limited."""
    problems = []
    volumes = {volume.get("name") for volume in spec.get("volumes") or []}
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            for j, mount in enumerate(container.get("volumeMounts") or []):
                if mount.get("name") not in volumes:
                    problems.append(f'{prefix}.{kind}[{i}].volumeMounts[{j}].name: Not found: "{mount.get("name")}"')
            resources = container.get("resources") or {}
            limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
            for resource, amount in requests.items():
                extended = "/" in resource and not resource.startswith(("kubernetes.io/", "requests."))
                if extended and str(limits.get(resource)) != str(amount):
                    problems.append(
                        f'{prefix}.{kind}[{i}].resources.requests[{resource}]: Invalid value: "{amount}": must be '
                        f"equal to {resource} limit of {limits.get(resource, 0)}"
                    )
    return problems


class FakeKube:
    """The fake API server and its kubelet. Use `serve()` as a context manager; `kubeconfig(path)` writes
    a kubeconfig that points the `kubernetes` client at it (plain HTTP, no credentials)."""

    def __init__(self, workdir: Path, kubernetes_version: str = KUBERNETES_VERSION) -> None:
        self.workdir = workdir
        self.kubernetes_version = kubernetes_version
        self.faults = Faults()
        # How the kubelet turns a container's command into a local one: tests substitute a small script
        # for the image's real program here, so the pod body keeps the command production sends.
        self.local_command: Callable[[list[str]], list[str]] = default_local_command
        # Variables every container gets besides its own `env` (an image's ENV lines).
        self.base_env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(workdir),
        }
        self.requests: list[Request] = []
        self.created_pods: list[dict[str, Any]] = []
        self.created_jobs: list[dict[str, Any]] = []
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._resource_version = 0
        self._changed = threading.Condition()
        self._stopping = False
        self._kubelets: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None

    # --- the server ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake API server is not serving"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def serve(self) -> Iterator[FakeKube]:
        """Serve on a free port of 127.0.0.1 until the block ends; then kill every pod's process."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: the client keeps its connections alive, and logs stream in chunks.
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                fake._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self, "POST")

            def do_DELETE(self) -> None:  # noqa: N802
                fake._handle(self, "DELETE")

            def do_PUT(self) -> None:  # noqa: N802
                fake._handle(self, "PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                fake._handle(self, "PATCH")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, name="fake-kube", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            with self._changed:
                self._stopping = True
                pods = list(self._pods.values())
                self._changed.notify_all()
            for pod in pods:
                self._kill(pod)
            self._server.shutdown()
            self._server.server_close()
            for kubelet in self._kubelets:
                kubelet.join(timeout=10)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server at `path` (JSON is YAML) and return it."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config, indent=1))
        return path

    # --- what tests look at ----------------------------------------------------------------------

    def pod_names(self) -> list[str]:
        """The pods that exist now."""
        with self._changed:
            return sorted(pod.name for pod in self._pods.values())

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        """The recorded requests with this method whose path matches the regular expression `pattern`."""
        with self._changed:
            return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # --- routing ---------------------------------------------------------------------------------

    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        (m, re.compile(p), h)
        for m, p, h in [
            ("GET", r"^/version/?$", "_get_version"),
            ("POST", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$", "_create_pod"),
            ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$", "_list_pods"),
            ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)(?:/status)?$", "_read_pod"),
            ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$", "_read_log"),
            ("DELETE", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$", "_delete_pod"),
            ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$", "_list_events"),
            ("POST", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$", "_create_job"),
            ("GET", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$", "_list_jobs"),
            ("GET", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)(?:/status)?$", "_read_job"),
            ("DELETE", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)$", "_delete_job"),
        ]
    ]

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._changed:
            self.requests.append(Request(method, url.path, query, body))
        try:
            for route_method, pattern, name in self._ROUTES:
                match = pattern.match(url.path)
                if match and route_method == method:
                    getattr(self, name)(handler, query, body, **match.groupdict())
                    return
            raise ApiError(404, "NotFound", f"the fake API server does not serve {method} {url.path}")
        except ApiError as err:
            self._send_json(handler, err.code, err.status())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a log follower closing its stream)

    @staticmethod
    def _send_json(handler: BaseHTTPRequestHandler, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    # --- validation ------------------------------------------------------------------------------

    def _validate(self, kind: str, api_version: str, body: Any, namespace: str) -> dict[str, Any]:
        """The object to store: `body` with what the server fills in, after the checks a real server
        makes (schema, names, labels); `ApiError` 422 (Invalid) otherwise."""
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", f"the request body is not a JSON object: {body!r:.200}")
        obj = json.loads(json.dumps(body))
        # The API server takes kind and apiVersion from the URL when a client leaves them out.
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", api_version)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        problems: list[str] = []
        try:
            kubernetes_validate.validate(obj, self.kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(part) for part in err.absolute_path) or "(root)"
            problems.append(f"{where}: {err.message}")
        if not name or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain is required")
        if meta.get("namespace", namespace) != namespace:
            problems.append("metadata.namespace: Invalid value: it does not match the namespace of the request")
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(f"metadata.labels: Invalid value: {value!r}: not a valid label value (key {key})")
        if not problems:  # the schema holds: the spec's shape can be trusted
            spec = obj.get("spec") or {}
            if kind == "Pod":
                problems.extend(_pod_spec_problems(spec, "spec"))
            else:
                template = spec.get("template") or {}
                problems.extend(_pod_spec_problems(template.get("spec") or {}, "spec.template.spec"))
        if problems:
            raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: ' + "; ".join(problems))
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=self._next_version(),
        )
        return obj

    # --- pods ------------------------------------------------------------------------------------

    def _get_version(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any) -> None:
        major, minor, _ = self.kubernetes_version.split(".")
        self._send_json(handler, 200, {"major": major, "minor": minor, "gitVersion": f"v{self.kubernetes_version}"})

    def _create_pod(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str) -> None:
        with self._changed:
            obj = self._validate("Pod", "v1", body, ns)
            pod = self._add_pod(obj, raw=body)
            response = json.loads(json.dumps(pod.obj))
        self._send_json(handler, 201, response)

    def _add_pod(self, obj: dict[str, Any], raw: Any, job: str | None = None) -> _Pod:
        """Store a validated pod and start its kubelet (call with the lock held)."""
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self._pods:
            raise ApiError(409, "AlreadyExists", f'pods "{key[1]}" already exists')
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        pod = _Pod(obj=obj, faults=Faults(**vars(self.faults)), job=job)
        self._pods[key] = pod
        self.created_pods.append(raw)
        kubelet = threading.Thread(target=self._kubelet, args=(pod,), name=f"kubelet-{pod.name}", daemon=True)
        self._kubelets.append(kubelet)
        kubelet.start()
        return pod

    def _find_pod(self, ns: str, name: str) -> _Pod:
        pod = self._pods.get((ns, name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        return pod

    def _list_pods(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str) -> None:
        fields = _selector(query.get("fieldSelector", ""))
        labels = _selector(query.get("labelSelector", ""))
        with self._changed:
            pods = [pod for pod in self._pods.values() if pod.namespace == ns and _matches(pod.obj, fields, labels)]
            for pod in pods:
                pod.polled += 1
            self._changed.notify_all()
            items = [json.loads(json.dumps(pod.obj)) for pod in pods]
            version = str(self._resource_version)
        self._send_json(
            handler,
            200,
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items},
        )

    def _read_pod(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str, name: str) -> None:
        with self._changed:
            pod = self._find_pod(ns, name)
            pod.polled += 1
            self._changed.notify_all()
            obj = json.loads(json.dumps(pod.obj))
        self._send_json(handler, 200, obj)

    def _delete_pod(
        self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str, name: str
    ) -> None:
        with self._changed:
            pod = self._find_pod(ns, name)
        self._send_json(handler, 200, self._delete(pod))

    def _delete(self, pod: _Pod) -> dict[str, Any]:
        """Remove the pod from the API and kill its process (SIGTERM, then SIGKILL), as the kubelet does
        after the grace period; its log followers see their streams end."""
        with self._changed:
            pod.obj["metadata"]["deletionTimestamp"] = _now()
            obj = json.loads(json.dumps(pod.obj))
            pod.deleted = True
            pod.log_closed = True
            self._pods.pop((pod.namespace, pod.name), None)
            self._changed.notify_all()
        self._kill(pod)
        return obj

    @staticmethod
    def _kill(pod: _Pod) -> None:
        process = pod.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def _list_events(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str) -> None:
        fields = _selector(query.get("fieldSelector", ""))
        involved = fields.pop("involvedObject.name", None)
        if fields:
            raise ApiError(400, "BadRequest", f"the fake API server does not filter events by {sorted(fields)}")
        with self._changed:
            items = [
                event
                for event in self._events
                if event["metadata"]["namespace"] == ns and involved in (None, event["involvedObject"]["name"])
            ]
        self._send_json(handler, 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})

    # --- logs ------------------------------------------------------------------------------------

    def _read_log(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str, name: str) -> None:
        with self._changed:
            pod = self._find_pod(ns, name)
            containers = [c["name"] for c in pod.obj["spec"]["containers"]]
            container = query.get("container") or (containers[0] if len(containers) == 1 else "")
            if container not in containers:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'container "{container}" is not valid for pod "{name}" (containers: {containers})',
                )
            waiting = self._waiting_reason(pod)
            if waiting:
                # What the API server answers for a container that has not started.
                raise ApiError(
                    400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {waiting}'
                )
            lines = self._log_window(pod, query)
        follow = _flag(query, "follow")
        stamp = _flag(query, "timestamps")

        def render(chunk: list[tuple[int, _LogLine]]) -> bytes:
            return "".join(
                f"{_rfc3339_nano(line.timestamp_ns)} {line.text}\n" if stamp else f"{line.text}\n" for _, line in chunk
            ).encode()

        if not follow:
            data = render(lines)
            handler.send_response(200)
            handler.send_header("Content-Type", "text/plain")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        next_index = lines[-1][0] + 1 if lines else len(pod.log)
        pending = lines
        while True:
            if pending:
                data = render(pending)
                handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                handler.wfile.flush()
                with self._changed:
                    pod.streamed = max(pod.streamed, pending[-1][0])
                    self._changed.notify_all()
            with self._changed:
                while next_index >= len(pod.log) and not pod.log_closed and not self._stopping:
                    self._changed.wait(timeout=1)
                pending = list(enumerate(pod.log))[next_index:]
                next_index = len(pod.log)
                done = not pending and (pod.log_closed or self._stopping)
            if done:
                break
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    @staticmethod
    def _log_window(pod: _Pod, query: dict[str, str]) -> list[tuple[int, _LogLine]]:
        """The lines `sinceSeconds` and `tailLines` select, with their indexes."""
        lines = list(enumerate(pod.log))
        if "sinceSeconds" in query:
            cutoff = time.time_ns() - int(query["sinceSeconds"]) * 1_000_000_000
            lines = [(i, line) for i, line in lines if line.timestamp_ns >= cutoff]
        if "tailLines" in query:
            tail = int(query["tailLines"])
            lines = lines[-tail:] if tail > 0 else []
        return lines

    @staticmethod
    def _waiting_reason(pod: _Pod) -> str | None:
        statuses = pod.obj["status"].get("containerStatuses") or []
        if not statuses:
            return "ContainerCreating"
        waiting = statuses[0]["state"].get("waiting")
        return waiting.get("reason", "ContainerCreating") if waiting else None

    # --- the kubelet -----------------------------------------------------------------------------

    def _set_status(self, pod: _Pod, phase: str, state: dict[str, Any], *, ready: bool = False) -> None:
        """Report the first container's `state` (call with the lock held)."""
        container = pod.obj["spec"]["containers"][0]
        status = pod.obj["status"]
        status["phase"] = phase
        status.setdefault("startTime", _now())
        status["hostIP"] = status["podIP"] = "127.0.0.1"
        status["containerStatuses"] = [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "" if "waiting" in state else f"docker-pullable://{container.get('image', '')}@sha256:0",
                "ready": ready,
                "started": "running" in state,
                "restartCount": 0,
                "state": state,
            }
        ]
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
        pod.obj["metadata"]["resourceVersion"] = self._next_version()
        self._changed.notify_all()

    def _event(self, pod: _Pod, reason: str, message: str) -> None:
        """Record a Warning event about the pod (call with the lock held)."""
        self._events.append(
            {
                "kind": "Event",
                "apiVersion": "v1",
                "metadata": {"name": f"{pod.name}.{len(self._events)}", "namespace": pod.namespace},
                "involvedObject": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace},
                "reason": reason,
                "message": message,
                "type": "Warning",
                "count": 1,
                "firstTimestamp": _now(),
                "lastTimestamp": _now(),
            }
        )

    def _kubelet(self, pod: _Pod) -> None:
        container = pod.obj["spec"]["containers"][0]
        image = container.get("image", "")
        time.sleep(_STATE_PAUSE_S)
        with self._changed:
            if pod.deleted:
                return
            self._set_status(pod, "Pending", {"waiting": {"reason": "ContainerCreating"}})
        time.sleep(_STATE_PAUSE_S)
        if pod.faults.image_pull_error:
            message = (
                f'Failed to pull image "{image}": rpc error: code = Unknown desc = failed to pull and unpack '
                f'image "docker.io/library/{image}": pull access denied, repository does not exist or may '
                "require authorization"
            )
            with self._changed:
                if pod.deleted:
                    return
                self._event(pod, "Failed", message)
                self._set_status(pod, "Pending", {"waiting": {"reason": "ErrImagePull", "message": message}})
            time.sleep(_STATE_PAUSE_S * 4)
            with self._changed:
                if not pod.deleted:
                    back_off = f'Back-off pulling image "{image}"'
                    self._event(pod, "Failed", back_off)
                    self._set_status(pod, "Pending", {"waiting": {"reason": "ImagePullBackOff", "message": back_off}})
            return  # never runs: it waits until someone deletes the pod
        argv = self.local_command([*(container.get("command") or []), *(container.get("args") or [])])
        env = {**self.base_env, "HOSTNAME": pod.name}
        for variable in container.get("env") or []:
            env[variable["name"]] = variable.get("value", "")  # valueFrom (secrets) is not resolved here
        with self._changed:
            if pod.deleted or self._stopping:
                return
            pod.process = subprocess.Popen(
                argv,
                env=env,
                cwd=container.get("workingDir") or self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            started = _now()
            self._set_status(pod, "Running", {"running": {"startedAt": started}}, ready=True)
        assert pod.process.stdout is not None
        last_ns = 0
        for raw in pod.process.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._changed:
                last_ns = max(time.time_ns(), last_ns + 1)  # distinct, increasing timestamps per line
                pod.log.append(_LogLine(last_ns, text))
                index = len(pod.log) - 1
                self._changed.notify_all()
            if pod.faults.oom_kill_after and pod.faults.oom_kill_after in text and not pod.oom_killed:
                pod.oom_killed = True
                pod.process.send_signal(signal.SIGKILL)
            if pod.faults.delete_after and pod.faults.delete_after in text:
                threading.Thread(target=self._delete_once_streamed, args=(pod, index), daemon=True).start()
        code = pod.process.wait()
        with self._changed:
            if pod.deleted:
                return
            exit_code = code if code >= 0 else 128 - code  # a signal's number, as a container runtime reports it
            reason = "OOMKilled" if pod.oom_killed else ("Completed" if exit_code == 0 else "Error")
            terminated = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": _now()}
            self._set_status(pod, "Succeeded" if exit_code == 0 else "Failed", {"terminated": terminated})
            pod.log_closed = True
            self._job_pod_finished(pod, exit_code == 0)
            self._changed.notify_all()

    def _delete_once_streamed(self, pod: _Pod, index: int) -> None:
        """`Faults.delete_after`: delete the pod mid-run as a watcher sees it: once a log follower has the
        trigger line and the client has polled the pod's status after that. Not before: dagster_k8s waits
        for the pod to *launch* (24 h by default) when it first looks for it after it was deleted, and a
        deletion before the follower starts hits its first log read, which retries a 404 forever. The
        deadline only keeps a broken client from leaving the pod running."""
        deadline = time.monotonic() + 240
        with self._changed:
            while pod.streamed < index and not pod.deleted and time.monotonic() < deadline:
                self._changed.wait(timeout=0.1)
            polled = pod.polled
            while pod.polled == polled and not pod.deleted and time.monotonic() < deadline:
                self._changed.wait(timeout=0.1)
            if pod.deleted:
                return
        self._delete(pod)

    # --- batch/v1 jobs (dagster_k8s.k8s_job_executor) ----------------------------------------------

    def _create_job(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str) -> None:
        with self._changed:
            obj = self._validate("Job", "batch/v1", body, ns)
            name = obj["metadata"]["name"]
            if (ns, name) in self._jobs:
                raise ApiError(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            obj["status"] = {"startTime": _now(), "active": 1}
            self._jobs[(ns, name)] = obj
            self.created_jobs.append(body)
            # The job controller: one pod from the template, labelled with the job's name.
            template = json.loads(json.dumps(obj["spec"]["template"]))
            meta = template.setdefault("metadata", {})
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta.update(name=f"{name}-{suffix}", namespace=ns)
            meta.setdefault("labels", {}).update({"job-name": name, "batch.kubernetes.io/job-name": name})
            pod_obj = self._validate("Pod", "v1", {"apiVersion": "v1", "kind": "Pod", **template}, ns)
            self._add_pod(pod_obj, raw=pod_obj, job=name)
            response = json.loads(json.dumps(obj))
        self._send_json(handler, 201, response)

    def _job_pod_finished(self, pod: _Pod, succeeded: bool) -> None:
        """Count the pod in its job's status (call with the lock held)."""
        job = self._jobs.get((pod.namespace, pod.job)) if pod.job else None
        if job is None:
            return
        status = job["status"]
        status.pop("active", None)
        status["succeeded" if succeeded else "failed"] = 1
        if succeeded:
            status["completionTime"] = _now()
        job["metadata"]["resourceVersion"] = self._next_version()

    def _find_job(self, ns: str, name: str) -> dict[str, Any]:
        job = self._jobs.get((ns, name))
        if job is None:
            raise ApiError(404, "NotFound", f'jobs.batch "{name}" not found')
        return job

    def _list_jobs(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str) -> None:
        fields = _selector(query.get("fieldSelector", ""))
        labels = _selector(query.get("labelSelector", ""))
        with self._changed:
            items = [
                json.loads(json.dumps(job))
                for (n, _), job in self._jobs.items()
                if n == ns and _matches(job, fields, labels)
            ]
        self._send_json(handler, 200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": items})

    def _read_job(self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str, name: str) -> None:
        with self._changed:
            obj = json.loads(json.dumps(self._find_job(ns, name)))
        self._send_json(handler, 200, obj)

    def _delete_job(
        self, handler: BaseHTTPRequestHandler, query: dict[str, str], body: Any, ns: str, name: str
    ) -> None:
        with self._changed:
            job = self._jobs.pop((ns, name), None)
            if job is None:
                raise ApiError(404, "NotFound", f'jobs.batch "{name}" not found')
            pods = [pod for pod in self._pods.values() if pod.namespace == ns and pod.job == name]
        for pod in pods:  # propagationPolicy Foreground/Background: the job's pods go too
            self._delete(pod)
        self._send_json(handler, 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

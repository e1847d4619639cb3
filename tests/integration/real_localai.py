"""LocalAI v4.9.0 from the image `make images` builds, run as a process on this host's loopback (`buildah run`,
chroot isolation, the host's network) with exactly what the operator renders for the real-node sample pool: its
model YAMLs, laid out in /models by the real fetch-models from the in-cluster mirror's image, and the environment of
its `localai` container. A pod adds Kubernetes around the same process; the e2e tier runs that too. The sample
route's router can stand in front of it (`router_in_front`), as the conformance tier and benchmarks/real_node.py
--router run it."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.constants import FALLBACK_API_KEY_ENV
from localai_operator.devcluster import images, stack
from localai_operator.render import RenderSettings, pool_objects, route_objects
from localai_operator.render.pool import CONFIG_DIR, DOWNLOADS_FILE
from tests.helpers import wait_for

API_KEY = "conformance-key"
KEY_SECRET = {"name": "gemma-key", "key": "api-key"}
PLACEHOLDER_IMAGES = stack.StackImages("operator:test", "localai:test", "mirror:test")
READY_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sample(kind: str) -> dict[str, Any]:
    """The real-node samples' object of `kind` (its images left as placeholders)."""
    docs = [d for d in yaml.safe_load_all(stack.sample_manifests(PLACEHOLDER_IMAGES)) if d]
    found: dict[str, Any] = next(d for d in docs if d["kind"] == kind)
    return found


@dataclass(frozen=True)
class Rendered:
    """What the operator renders for one pool: the ConfigMap's data and the `localai` container (and the model it
    was rendered from)."""

    config: dict[str, str]
    container: dict[str, Any]
    model: LLMModel

    def env(self, **overrides: str) -> dict[str, str]:
        """The container's environment, the API key Secret's value filled in, then `overrides`."""
        out: dict[str, str] = {}
        for item in self.container["env"]:
            if "value" in item:
                out[item["name"]] = item["value"]
            elif item.get("valueFrom", {}).get("secretKeyRef") == KEY_SECRET:
                out[item["name"]] = API_KEY
            else:
                raise AssertionError(f"no value for {item}")
        return {**out, **overrides}

    def model_yaml(self, model: str = stack.MODEL) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load(self.config[f"{model}.yaml"])
        return loaded


def render(
    pool_spec: Mapping[str, Any] | None = None, model_spec: Mapping[str, Any] | None = None
) -> Rendered:
    """The sample pool and model, with `pool_spec` / `model_spec` merged into their specs, rendered."""
    pool_doc, model_doc = copy.deepcopy(sample("InferencePool")), copy.deepcopy(sample("LLMModel"))
    pool_doc["spec"].update(pool_spec or {})
    model_doc["spec"].update(model_spec or {})
    for doc in (pool_doc, model_doc):
        doc["metadata"].setdefault("uid", f"{doc['kind']}-uid")
    model = LLMModel.parse(model_doc)
    objects = pool_objects(InferencePool.parse(pool_doc), {model.name: model}, RenderSettings())
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return Rendered(dict(config_map["data"]), container, model)


@contextmanager
def mirror_serving(log: Path) -> Iterator[str]:
    """The model-mirror image's program on a loopback port, once it answers; yields its base URL."""
    image = images.build("model-mirror")
    port = free_port()
    argv = ["python", images.MIRROR_PROGRAM, "--host", "127.0.0.1", "--port", str(port)]
    with images.Container(image, argv, log=log) as container:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: answers(f"{base}/healthz") or container.poll() is not None,
            60,
            "the mirror to listen",
            describe=log.read_text,
        )
        assert container.poll() is None, log.read_text()
        yield base


def answers(url: str) -> bool:
    """`url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def fetch_models(
    operator_image: images.Image, mirror: str, config: Mapping[str, str], work: Path
) -> tuple[int, Path, str]:
    """Runs the pool's init container program (the operator image's fetch-models) on volumes of its own, with the
    rendered ConfigMap at its mount and the download URLs pointed at `mirror`; (exit code, models dir, its log)."""
    config_dir, models_dir = work / "config", work / "models"
    config_dir.mkdir(parents=True)
    models_dir.mkdir()
    models_dir.chmod(0o777)  # the init container runs as uid 65532, as in the pod
    for name, text in config.items():
        if name == DOWNLOADS_FILE:
            entries = json.loads(text)
            for entry in entries:
                entry["url"] = f"{mirror}/{entry['file']}"
            text = json.dumps(entries)
        (config_dir / name).write_text(text)
    argv = [
        "localai-operator",
        "fetch-models",
        "--manifest",
        f"{CONFIG_DIR}/{DOWNLOADS_FILE}",
        "--config-dir",
        CONFIG_DIR,
        "--models-dir",
        "/models",
    ]
    log = work / "fetch.log"
    volumes = {config_dir: CONFIG_DIR, models_dir: "/models"}
    with images.Container(operator_image, argv, volumes=volumes, log=log) as container:
        code = container.wait(300)
    return code, models_dir, log.read_text()


def copy_models(source: Path, target: Path, config: Mapping[str, str] | None = None) -> Path:
    """A models directory of its own for one LocalAI process: `source` hard-linked (weights and markers), with
    the model YAMLs of `config` written over it when given."""
    shutil.copytree(source, target, copy_function=_link)
    for name, text in (config or {}).items():
        if name.endswith(".yaml"):
            (target / name).unlink(missing_ok=True)
            (target / name).write_text(text)
    return target


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


@dataclass
class LocalAI:
    """A running `local-ai` from the image; `base` is its http://127.0.0.1:PORT."""

    container: images.Container
    base: str
    log: Path
    key: str | None

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def headers(self, key: str | None = "default", extra: Mapping[str, str] | None = None) -> dict[str, str]:
        token = self.key if key == "default" else key
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        return {"Content-Type": "application/json", **auth, **(extra or {})}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = "default",
        headers: Mapping[str, str] | None = None,
    ) -> urllib.request.Request:
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(
            self.url(path), data=data, method=method, headers=self.headers(key, headers)
        )

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = "default",
        timeout: float = 120,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(
                self.request(method, path, body, key=key, headers=headers), timeout=timeout
            ) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, raw = self.call("POST", path, body, **kwargs)
        return status, headers, json.loads(raw) if raw else None

    def events(self, path: str, body: Any, *, timeout: float = 120) -> tuple[dict[str, str], list[Any]]:
        """A streamed request's headers and its events' data, decoded (`[DONE]` as the string)."""
        with urllib.request.urlopen(self.request("POST", path, body), timeout=timeout) as response:
            raw = response.read().decode()
            headers = dict(response.headers)
        events = []
        for block in raw.split("\n\n"):
            data = [line.removeprefix("data: ") for line in block.splitlines() if line.startswith("data: ")]
            if data:
                text = "\n".join(data)
                events.append(text if text == "[DONE]" else json.loads(text))
        return headers, events

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", int(self.base.rsplit(":", 1)[1])), timeout=1):
                return True
        except OSError:
            return False

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.container.stop()


def start(image: images.Image, models: Path, env: Mapping[str, str], log: Path) -> LocalAI:
    """`local-ai` (the image's entrypoint, as in the pod) on a free loopback port with `env` and `models` at
    /models; returns at once (see `wait_ready`)."""
    port = free_port()
    environment = {**env, "LOCALAI_ADDRESS": f"127.0.0.1:{port}"}
    container = images.Container(
        image, ["/entrypoint.sh"], env=environment, volumes={models: "/models"}, log=log
    ).start()
    return LocalAI(container, f"http://127.0.0.1:{port}", log, environment.get("LOCALAI_API_KEY"))


def wait_ready(localai: LocalAI, timeout: float = READY_TIMEOUT) -> None:
    wait_for(
        lambda: localai.ready() or localai.container.poll() is not None,
        timeout,
        "LocalAI's /readyz",
        describe=lambda: localai.log_text()[-3000:],
    )
    assert localai.container.poll() is None, localai.log_text()[-5000:]


@contextmanager
def running(image: images.Image, models: Path, env: Mapping[str, str], log: Path) -> Iterator[LocalAI]:
    localai = start(image, models, env, log)
    try:
        wait_ready(localai)
        yield localai
    finally:
        localai.stop()


def in_image(image: images.Image, argv: list[str], log: Path) -> tuple[int, str]:
    """Runs `argv` in the image (no server), returns its exit code and output."""
    with images.Container(image, argv, log=log) as container:
        code = container.wait(120)
    return code, log.read_text(errors="replace")


def run_checked(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@contextmanager
def router_in_front(
    localai: LocalAI,
    work: Path,
    budget_ms: int,
    prices: dict[str, float] | None = None,
    fallback: bool = True,
) -> Iterator[str]:
    """The sample route's router, its config as the operator renders it, in front of this LocalAI (with the pool's
    key) and a cloud stand-in, with a first-token budget of `budget_ms` (and `prices` added to its fallback, or
    without a fallback: then requests go to LocalAI as sent, with no budget); yields its base URL."""
    work.mkdir(parents=True, exist_ok=True)
    cloud_port, router_port = free_port(), free_port()
    route = FallbackRoute.parse(
        {**sample_route(), "metadata": {**sample_route()["metadata"], "uid": "r-uid"}}
    )
    objects = route_objects(route, RenderSettings())
    config = yaml.safe_load(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["router.yaml"])
    for key in ("discovery", "pool"):  # one static endpoint instead of the pool's pods found by DNS
        config["local"].pop(key)
    config["local"].update(endpoints=[f"{localai.base}/v1"], apiKeyEnv="LOCAL_KEY")
    config["fallback"]["baseURL"] = f"http://127.0.0.1:{cloud_port}/v1"
    config["policy"]["firstTokenTimeoutMs"] = budget_ms
    config["fallback"].update(prices or {})
    if not fallback:
        config.pop("fallback")
    config["server"]["stateDirectory"] = str(work / "state")
    path = work / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"PATH": "/usr/bin:/bin", FALLBACK_API_KEY_ENV: "unused", "LOCAL_KEY": API_KEY}
    cloud = subprocess.Popen(
        [sys.executable, "-m", "localai_operator.testing.standins", "cloud", "--port", str(cloud_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    argv = ["router", "--config", str(path), "--host", "127.0.0.1", "--port", str(router_port)]
    with (work / "router.log").open("w") as log:
        router = subprocess.Popen(
            [sys.executable, "-m", "localai_operator.cli", *argv], env=env, stdout=log, stderr=log
        )
    base = f"http://127.0.0.1:{router_port}"
    try:
        wait_for(
            lambda: _endpoint_ready(base),
            60,
            "the router to list LocalAI",
            describe=lambda: (work / "router.log").read_text(),
        )
        yield base
    finally:
        for process in (router, cloud):
            process.terminate()
            process.wait(10)


def sample_route() -> dict[str, Any]:
    found: dict[str, Any] = next(
        d
        for d in yaml.safe_load_all(stack.sample_manifests(stack.StackImages("o:t", "l:t", "m:t")))
        if d and d["kind"] == "FallbackRoute" and d["metadata"]["name"] == stack.ROUTE
    )
    return found


def _endpoint_ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            endpoints = json.loads(response.read()).get("endpoints") or []
    except (OSError, ValueError):
        return False
    return any(e.get("breaker") == "closed" for e in endpoints)

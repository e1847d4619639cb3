"""`localai-operator render`: read custom resources from files, print what the operator would create."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from localai_operator.api import FallbackRoute, InferencePool, LLMModel
from localai_operator.api.base import validation_problems
from localai_operator.constants import API_VERSION
from localai_operator.render.common import RenderSettings
from localai_operator.render.pool import file_conflicts, pool_objects
from localai_operator.render.route import route_objects


def _documents(paths: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"{raw}: no such file or directory")
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"}) if path.is_dir() else [path]
        )
        for file in files:
            try:
                loaded = list(yaml.safe_load_all(file.read_text()))
            except yaml.YAMLError as err:
                raise ValueError(f"{file}: not valid YAML: {err}") from err
            docs.extend((str(file), doc) for doc in loaded if isinstance(doc, dict))
    return docs


def parse(
    docs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[LLMModel], list[InferencePool], list[FallbackRoute]]:
    kinds: dict[str, type[LLMModel] | type[InferencePool] | type[FallbackRoute]] = {
        cls.KIND: cls for cls in (LLMModel, InferencePool, FallbackRoute)
    }
    parsed: dict[str, list[Any]] = {kind: [] for kind in kinds}
    for source, doc in docs:
        cls = kinds.get(str(doc.get("kind")))
        if cls is None or doc.get("apiVersion") != API_VERSION:
            continue  # Secrets and other objects in the same directory are not ours to render
        name = (doc.get("metadata") or {}).get("name", "?")
        try:
            parsed[cls.KIND].append(cls.parse(doc))
        except ValidationError as err:
            problems = validation_problems(err)
            raise ValueError(f"{source}: {cls.KIND} {name!r} is invalid: {problems}") from err
    return parsed["LLMModel"], parsed["InferencePool"], parsed["FallbackRoute"]


def render_documents(
    docs: list[tuple[str, dict[str, Any]]], settings: RenderSettings | None = None
) -> list[dict[str, Any]]:
    models, pools, routes = parse(docs)
    by_key = {(m.namespace, m.name): m for m in models}
    out: list[dict[str, Any]] = []
    for pool in pools:
        missing = [name for name in pool.spec.models if (pool.namespace, name) not in by_key]
        if missing:
            raise ValueError(
                f"InferencePool {pool.name!r} serves LLMModel(s) {', '.join(missing)} that are not in the input"
            )
        served = {name: by_key[(pool.namespace, name)] for name in pool.spec.models}
        conflict = file_conflicts(list(served.values()))
        if conflict:
            raise ValueError(f"InferencePool {pool.name!r} is invalid: {conflict}")
        out.extend(pool_objects(pool, served, settings))
    pools_by_key = {(p.namespace, p.name): p for p in pools}
    for route in routes:
        ref = route.spec.primary.pool_ref
        primary = pools_by_key.get((route.namespace, ref.name)) if ref is not None else None
        served_by = (
            {name: by_key[(route.namespace, name)] for name in primary.spec.models}
            if primary is not None
            else None
        )
        out.extend(route_objects(route, settings, pool=primary, models=served_by))
    return out


def render_paths(paths: Iterable[str], settings: RenderSettings | None = None) -> str:
    return yaml.safe_dump_all(render_documents(_documents(paths), settings), sort_keys=False)

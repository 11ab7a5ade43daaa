"""Learned model versions over HTTP: what serves, and reloading after `python -m eval learn promote`.

    GET  /v1/admin/models    the promoted reranker / embedder versions, re-embedded collections, all versions
    POST /v1/admin/reload    read the registry again and serve what it promotes now (no restart)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from .api import components_of
from .auth import admin_only
from .learned import Registry, Served

router = APIRouter(tags=["admin"], dependencies=[Depends(admin_only)])  # operators' views: admin keys only


class ServedModels(BaseModel):
    reranker: str | None = Field(description="Promoted learned reranker (None: shipped model or none).")
    embedder: str | None = Field(description="Promoted learned embedder (None: the shipped embedder).")
    collections: dict[str, str] = Field(description="Collection -> physical collection re-embedded by `embedder`.")
    versions: list[dict[str, Any]] = Field(
        default_factory=list, description="Every learned version, oldest first: {version, kind, created, base, "
        "live, better, reason, metrics (its evaluation per set: {mrr, hit@1, hit@5, recall@10, questions}), "
        "baseline (what served when it was evaluated, on the same sets)}.",
    )
    shipped: dict[str, str | None] = Field(
        default_factory=dict, description="The shipped models, which serve where no learned version is promoted: "
        "{embedder, reranker (null: serving does not rerank)}.",
    )

    @classmethod
    def of(cls, request: Request) -> ServedModels:
        comp = components_of(request)
        served = comp.served
        shipped_reranker = comp.settings.rerank.model if comp.settings.rerank.enabled else None
        return cls(reranker=served.reranker, embedder=served.embedder, collections=dict(served.collections or {}),
                   versions=_versions(comp.registry, served),
                   shipped={"embedder": comp.settings.embedding.model, "reranker": shipped_reranker})


def _versions(registry: Registry, served: Served) -> list[dict[str, Any]]:
    out = []
    for version in registry.versions():
        m = registry.manifest(version)
        ev = m.get("evaluation", {})
        metrics = ev.get("metrics", {})
        out.append({"version": version, "kind": m.get("kind"), "created": m.get("created"), "base": m.get("base"),
                    "live": version in (served.reranker, served.embedder),
                    "better": ev.get("better"), "reason": ev.get("reason"),
                    "metrics": metrics.get(version, {}), "baseline": metrics.get(ev.get("serving"), {})})
    return out


@router.get("/v1/admin/models", response_model=ServedModels)
def served_models(request: Request) -> ServedModels:
    """The learned versions that serve now, and every version trained so far."""
    return ServedModels.of(request)


@router.post("/v1/admin/reload", response_model=ServedModels)
async def reload_models(request: Request) -> ServedModels:
    """Serve what the registry promotes now (after `python -m eval learn promote|rollback`); models load here."""
    comp = components_of(request)

    def reload() -> Served:
        served = comp.reload_models()
        comp.reranker  # noqa: B018  load now, not on the next question
        for collection in served.collections or {}:
            comp.embedder_for(collection)
        return served

    await run_in_threadpool(reload)
    return ServedModels.of(request)

"""`/dnc`: the do-not-call list over HTTP (docs/DIALER.md "Compliance"), for CRMs that record opt-outs.

    POST   /dnc            {"number": "+14155550100", "reason": "asked by email"}   201 added / 200 already
    DELETE /dnc/{number}   (or DELETE /dnc?number=...)                               200 / 404
    GET    /dnc            every entry;   GET /dnc/{number}  one entry or 404

Every route needs the bearer token (`http.bearer_token`), checked before the body is read
(`auth_first_route`). Numbers are normalised to E.164 (`region` for national ones); one that could not be
dialled is a 422 naming the problem, never stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sipbridge.config import HttpConfig
from sipbridge.dialer.numbers import NumberError
from sipbridge.dialer.suppression import DncEntry, DncList, parse_number
from sipbridge.http.errors import ApiError, error_responses
from sipbridge.http.guards import BearerToken, auth_first_route


class DncAdd(BaseModel):
    number: str = Field(..., min_length=1, max_length=64, description="E.164, or national with `region`.")
    reason: str = Field("", max_length=200, description="Why (kept with the entry).")
    region: str | None = Field(None, min_length=2, max_length=2, description="ISO country, national numbers.")


def _e164(raw: str, region: str | None) -> str:
    try:
        return parse_number(raw, region)
    except NumberError as exc:
        raise ApiError(422, f"not a dialable number: {exc}") from None


def _body(entry: DncEntry) -> dict[str, Any]:
    return {"number": entry.number, "reason": entry.reason, "source": entry.source,
            "added_at": entry.added_at, "call_id": entry.call_id}  # fmt: skip


def build_dnc_router(dnc: DncList, http: HttpConfig) -> APIRouter:
    token = BearerToken(http.bearer_token.get_secret_value() if http.bearer_token is not None else None)
    router = APIRouter(
        prefix="/dnc",
        tags=["dnc"],
        route_class=auth_first_route(token.check),
        responses=error_responses(401, 422),
    )

    @router.post("", status_code=201, responses={200: {"description": "Already on the list."}})
    async def add(body: DncAdd) -> JSONResponse:
        number = _e164(body.number, body.region)
        added = await asyncio.to_thread(dnc.add, number, body.reason, "http", now=time.time())
        entry = await asyncio.to_thread(dnc.get, number)
        assert entry is not None
        return JSONResponse({**_body(entry), "added": added}, status_code=201 if added else 200)

    @router.get("")
    async def entries() -> dict[str, Any]:
        rows = await asyncio.to_thread(dnc.entries)
        return {"count": len(rows), "numbers": [_body(e) for e in rows]}

    @router.get("/{number}", responses=error_responses(404))
    async def one(number: str, region: str | None = Query(None, max_length=2)) -> dict[str, Any]:
        e164 = _e164(number, region)
        entry = await asyncio.to_thread(dnc.get, e164)
        if entry is None:
            raise ApiError(404, f"{e164} is not on the do-not-call list")
        return _body(entry)

    async def remove(number: str, region: str | None) -> dict[str, Any]:
        e164 = _e164(number, region)
        if not await asyncio.to_thread(dnc.remove, e164):
            raise ApiError(404, f"{e164} is not on the do-not-call list")
        return {"number": e164, "removed": True}

    @router.delete("/{number}", responses=error_responses(404))
    async def delete_path(number: str, region: str | None = Query(None, max_length=2)) -> dict[str, Any]:
        return await remove(number, region)

    @router.delete("", responses=error_responses(404))
    async def delete_query(
        number: str = Query(..., max_length=64), region: str | None = Query(None, max_length=2)
    ) -> dict[str, Any]:
        return await remove(number, region)

    return router

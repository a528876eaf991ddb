"""The one error shape of the HTTP API: a status and `{"detail": "<what is wrong, naming the limit>"}`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ApiError(Exception):
    """A request that cannot be served; `status` is the HTTP status, `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ErrorBody(BaseModel):
    detail: str = Field(..., description="What is wrong, naming the config key of a limit where one applies.")


_WHEN: dict[int, str] = {
    401: "No or wrong bearer token (`http.bearer_token`).",
    404: "Unknown conversation or voice.",
    409: "The conversation is busy with another operation, or was closed while this one ran.",
    413: "Body, audio or text over `http.limits` (the detail names the key), or longer than the engine's"
    " context allows.",
    415: "Not an audio file we read (WAV, FLAC, OGG).",
    422: "Invalid body or parameters: not UTF-8, not JSON, nested too deep, a value out of range, a bad id.",
    429: "`http.limits.max_conversations` or `max_voices` reached.",
    500: "The engine failed (the conversation is restarted) or an internal error.",
    503: "The engine has no free session.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, each with the `ErrorBody` schema."""
    return {code: {"model": ErrorBody, "description": _WHEN[code]} for code in codes}

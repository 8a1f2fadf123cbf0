"""Requests to a served project, as its clients send them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT = 60


@dataclass(frozen=True)
class Response:
    status: int
    # The JSON document the response carries (its text where it is not JSON; None if empty).
    body: Any
    retry_after: str | None
    seconds: float  # from sending the request to reading the whole response


def request(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    *,
    request_id: str | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    """Send a request (with `body` as JSON) and read its response, whatever its status."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    started = time.monotonic()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, method=method, headers=headers),
            timeout=timeout,
        ) as response:
            status, answer, content = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, answer, content = error.code, error.headers, error.read()
    seconds = time.monotonic() - started
    if not content:
        document = None
    elif "json" in answer.get("Content-Type", ""):
        document = json.loads(content)
    else:
        document = content.decode(errors="replace")
    return Response(status, document, answer["Retry-After"], seconds)

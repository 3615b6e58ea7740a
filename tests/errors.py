"""The OpenAI error shape, checked the same way by the in-process and the real-server tests."""

from __future__ import annotations

from typing import Any

import httpx


def assert_error(
    r: httpx.Response, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI-shaped error body with all four keys; ``param``/``code`` checked if given."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, (key, err)
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def names_field(param: str | None, field: str) -> bool:
    """``param`` is the field itself or a path inside it (``logit_bias.15``, ``prompt[1]``)."""
    return param is not None and (param == field or param.startswith((f"{field}.", f"{field}[")))

"""Pages from templates in the same sandboxed Jinja the chat templates use, with
autoescape on: prompts, outputs, names and comments are untrusted text, and a model's
``<script>`` reaches the browser as text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import PackageLoader, Undefined, select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferline.dashboard.auth import Session

_ENV = ImmutableSandboxedEnvironment(
    loader=PackageLoader("inferline.dashboard", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _absent(value: Any) -> bool:
    """None, or a field the data does not have (Jinja's Undefined)."""
    return value is None or isinstance(value, Undefined)


def _when(epoch: Any) -> str:
    if _absent(epoch):
        return "–"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(seconds: Any) -> str:
    return "–" if _absent(seconds) else f"{float(seconds) * 1000:.0f}"


def _money(usd: Any) -> str:
    return "–" if _absent(usd) else f"${float(usd):.6f}"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


_ENV.filters.update(when=_when, ms=_ms, money=_money, pretty=_pretty)

NAV = (
    ("overview", "/ui", "viewer"), ("traces", "/ui/traces", "viewer"),
    ("prompts", "/ui/prompts", "viewer"), ("evals", "/ui/evals", "viewer"),
    ("reviews", "/ui/reviews", "reviewer"), ("batches", "/ui/batches", "viewer"),
    ("keys", "/ui/keys", "admin"),
)  # fmt: skip


def page(
    request: Request, template: str, session: Session | None, status_code: int = 200,
    **values: Any,
) -> HTMLResponse:  # fmt: skip
    """``template`` rendered with the session, the navigation it may use, and ``values``."""
    nav = [(name, url) for name, url, role in NAV if session is not None and session.may(role)]
    html = _ENV.get_template(template).render(
        session=session, nav=nav, path=request.url.path, **values
    )
    headers = {"cache-control": "no-store", "x-frame-options": "DENY",
               "content-security-policy": "default-src 'self'; img-src 'self' data:; "
               "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"}  # fmt: skip
    return HTMLResponse(html, status_code=status_code, headers=headers)

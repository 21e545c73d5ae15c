"""The dashboard's routes: sign-in, the static files, and the guard every page goes
through (a session with the page's role; a CSRF token on every POST)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from inferline.dashboard.auth import COOKIE, CSRF_HEADER, SESSION_S, Session, Sessions, csrf_ok
from inferline.dashboard.render import page
from inferline.server.app import Extension
from inferline.server.state import ServerState

router = APIRouter(include_in_schema=False)


class Forbidden(Exception):
    """The session may not see this page (or sent no CSRF token)."""

    def __init__(self, session: Session | None, reason: str) -> None:
        super().__init__(reason)
        self.session, self.reason = session, reason


def sessions_of(request: Request) -> Sessions:
    """The app's sessions."""
    sessions: Sessions = request.app.state.dashboard
    return sessions


def require(request: Request, role: str) -> Session:
    """The request's session if it has ``role`` (raises `Forbidden`; none: to sign-in)."""
    session = sessions_of(request).of(request)
    if session is None:
        raise Forbidden(None, "sign in")
    if not session.may(role):
        raise Forbidden(session, f"this page needs the {role} role")
    return session


def require_post(request: Request, role: str, token: str | None) -> Session:
    """`require`, and the session's CSRF token in the form or the ``X-CSRF-Token`` header."""
    session = require(request, role)
    if not csrf_ok(session, token or request.headers.get(CSRF_HEADER)):
        raise Forbidden(session, "the form's CSRF token is missing or wrong: reload the page")
    return session


def state_of(request: Request) -> ServerState:
    """The server's state."""
    state: ServerState = request.app.state.inferline
    return state


@router.get("/ui/login")
def login_form(request: Request, error: str | None = None) -> Response:
    """The sign-in page."""
    return page(request, "login.html", None, error=error)


@router.post("/ui/login")
def login(request: Request, key: str = Form("")) -> Response:
    """Opens a session for an API key; back to the form when the key is not valid."""
    opened = sessions_of(request).open(key.strip())
    if opened is None:
        return page(request, "login.html", None, status_code=401, error="not a valid API key")
    cookie, _ = opened
    response = RedirectResponse("/ui", status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=SESSION_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/ui")  # fmt: skip
    return response


@router.post("/ui/logout")
def logout(request: Request, csrf: str | None = Form(None)) -> Response:
    """Ends the session."""
    require_post(request, "viewer", csrf)
    sessions_of(request).close(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Forbidden)
    if exc.session is None:
        return RedirectResponse("/ui/login", status_code=303)
    return page(request, "error.html", exc.session, status_code=403, message=exc.reason)


def dashboard_extension(sessions: Sessions) -> Extension:
    """The dashboard as an app extension: its routes, static files and sessions."""
    from inferline.dashboard import batches, overview, pages, review

    combined = APIRouter(include_in_schema=False)
    for part in (router, overview.router, pages.router, review.router, batches.router):
        combined.include_router(part)

    def bind(app: FastAPI) -> None:
        static = files("inferline.dashboard") / "static"
        app.mount("/ui/static", StaticFiles(directory=str(static)), name="ui-static")
        app.add_exception_handler(Forbidden, _forbidden)

    return Extension(combined, "dashboard", sessions, bind=bind)


def with_notice(path: str, notice: str) -> RedirectResponse:
    """A redirect (303) to a page that shows ``notice`` (quoted, at most 200 characters)."""
    from urllib.parse import quote

    return RedirectResponse(f"{path}?notice={quote(notice[:200])}", status_code=303)

"""The operator page's routes under `/ui/`.

Reading needs a session (`sessions.py`), opened by logging in with an API key of
the read or admin scope; on the unix socket (the admin) no login is asked. Every
POST must come from this page: a cross-site `Origin` or `Sec-Fetch-Site` is
refused, and a form that writes while logged in sends the session's CSRF token.
The views are plain HTML forms and tables; nothing needs JavaScript.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from server.api.auth import credential
from server.api.deps import WebDeps
from server.page import facts
from server.page.sessions import COOKIE, Session, Sessions
from server.page.templates import STYLE, render
from server.store.model import KeyRejected

__all__ = ["page_routes"]

MAX_FORM = 4096  # bytes: a login form holds one key
PROTOCOLS = ("tcp", "udp", "icmp", "sctp")
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # "no-referrer" would make a browser send `Origin: null` with this page's own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_LOCAL = Session(csrf="", who="the server's socket", scope="admin", expires=datetime.max)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers=_HEADERS)


def _to(path: str) -> RedirectResponse:
    return RedirectResponse(path, 303, headers=_HEADERS)


def _same_origin(request: Request) -> bool:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:  # not sent by every browser on a same-origin form
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form, bounded: larger bodies are not read."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {k: v[0] for k, v in fields.items()}


def page_routes(deps: WebDeps, sessions: Sessions) -> list[Route]:
    store, clock = deps.store, deps.clock

    def current(request: Request) -> Session | None:
        if deps.local:
            return _LOCAL
        session = sessions.get(request.cookies.get(COOKIE, ""), clock())
        if session is not None and session.api_key is not None:
            try:  # an expired or revoked key ends its sessions
                store.use_api_key(session.api_key, clock())
            except KeyRejected:
                sessions.end(request.cookies.get(COOKIE, ""))
                return None
        return session

    Handler = Callable[[Request, Session], Awaitable[Response]]

    def logged_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = current(request)
            if session is None:
                return _to("/ui/login")
            return await handler(request, session)

        return endpoint

    async def login_form(request: Request) -> Response:
        if current(request) is not None:
            return _to("/ui/")
        return _html(render("login", error=None))

    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return _html(render("login", error="log in from this server's own page"), 403)
        text = (await _form(request)).get("key", "").strip()
        text = credential(f"Bearer {text}") or ""
        try:
            key = store.use_api_key(text, clock())
        except KeyRejected as exc:
            return _html(render("login", error=f"not logged in: {exc.reason}"), 401)
        session_id, session = sessions.start(f"API key {key.id}", key.scope, clock(), api_key=text)
        response = _to("/ui/")
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int((session.expires - clock()).total_seconds()),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(request: Request) -> Response:
        session = current(request)
        form = await _form(request)
        if session is None or deps.local:
            return _to("/ui/login")
        if not _same_origin(request) or not session.csrf_ok(form.get("csrf", "")):
            return _html(render("login", error="refused: this form did not come from here"), 403)
        sessions.end(request.cookies.get(COOKIE, ""))
        response = _to("/ui/login")
        response.delete_cookie(COOKIE, path="/ui")
        return response

    async def overview(request: Request, session: Session) -> Response:
        tailnet, registry = deps.tailnet, deps.registry
        return _html(
            render(
                "overview",
                session=session,
                commit=facts.commit_facts(deps.status),
                nodes=facts.node_rows(tailnet, registry),
                users=facts.user_rows(tailnet, registry),
            )
        )

    async def explorer(request: Request, session: Session) -> Response:
        q = request.query_params
        form = {k: q.get(k, "") for k in ("src", "dst", "port", "proto")}
        form["proto"] = form["proto"] or "tcp"
        answer, error = None, None
        if form["src"] or form["dst"]:
            try:
                answer = facts.access(
                    deps.tailnet, deps.registry, form["src"], form["dst"], form["port"],
                    form["proto"],
                )  # fmt: skip
            except ValueError as exc:
                error = str(exc)
        return _html(
            render(
                "access",
                session=session,
                form=form,
                answer=answer,
                error=error,
                protocols=PROTOCOLS,
                serving=deps.status.serving,
                names=facts.known_names(deps.tailnet, deps.registry),
            ),
            200 if error is None else 400,
        )

    async def style(request: Request) -> Response:
        return Response(STYLE, media_type="text/css", headers=_HEADERS)

    async def root(request: Request) -> Response:
        return _to("/ui/")

    return [
        Route("/", root),
        Route("/ui", root),
        Route("/ui/", logged_in(overview)),
        Route("/ui/access", logged_in(explorer)),
        Route("/ui/login", login_form, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/style.css", style),
    ]

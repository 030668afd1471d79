"""What keeps the review app private to the person who started it (Jupyter's model).

- A random token in the printed URL: the first page load carries it in the query and gets it
  back as an HttpOnly, SameSite=Strict cookie named after the port (two servers on one
  machine keep apart); every other request needs the cookie, the query or ``X-Curate-Token``.
- A CSRF token on every state-changing request (``X-CSRF-Token``, JSON body): the page has
  it, a foreign page that makes the browser send the cookie does not.
- A ``Host`` check: a DNS-rebinding page reaches 127.0.0.1 under its own name, so a request
  whose ``Host`` is not one of this server's names is refused before anything else.
- A Content-Security-Policy: no source at all by default; the page's own script and style by
  nonce, images and API calls from this origin only; no framing, no forms, no base URL.

Refusals are 403 with a one-line JSON ``error``; nothing is written.
"""

from __future__ import annotations

import secrets
import socket

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

TOKEN_HEADER = "x-curate-token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD"}
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the first URL: never pass it on
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def page_policy(nonce: str) -> str:
    """The page's CSP: its own nonce'd script and style, images and fetches from itself only."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class Guard:
    """The secrets and the names of one server listening on ``host``:``port``."""

    def __init__(self, host: str, port: int) -> None:
        self.token = secrets.token_urlsafe(24)
        self.csrf = secrets.token_urlsafe(24)
        self.cookie = f"curate_review_{port}"
        names = set(LOOPBACK) | {f"[{host}]" if ":" in host else host}
        if host in ("0.0.0.0", "::"):  # reached by the machine's name from elsewhere
            names |= {socket.gethostname(), socket.getfqdn()}
        self.hosts = {f"{name}:{port}" for name in names}

    def refusal(self, request: Request) -> str | None:
        """Why ``request`` is refused, or None when it may pass."""
        host = request.headers.get("host", "")
        if host not in self.hosts:
            return f"Host {host!r} is not this server's (refused against DNS rebinding)"
        given = (
            request.query_params.get("token")
            or request.cookies.get(self.cookie)
            or request.headers.get(TOKEN_HEADER)
            or ""
        )
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return "missing or wrong token: open the URL the server printed"
        if request.method not in SAFE_METHODS:
            if not secrets.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), self.csrf.encode()):
                return "missing or wrong CSRF token"
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return "a state-changing request takes a JSON body (Content-Type: application/json)"
        return None

    def remember(self, request: Request, response: Response) -> None:
        """Hand the URL's token back as this server's cookie, so images and fetches carry it."""
        if request.query_params.get("token"):
            response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")


class GuardMiddleware(BaseHTTPMiddleware):
    """Refuses what :meth:`Guard.refusal` refuses; puts the safety headers on every answer."""

    def __init__(self, app, guard: Guard) -> None:
        super().__init__(app)
        self.guard = guard

    async def dispatch(self, request: Request, call_next) -> Response:
        reason = self.guard.refusal(request)
        response = JSONResponse({"error": reason}, status_code=403) if reason else await call_next(request)
        response.headers.update(HEADERS)
        response.headers.setdefault("Content-Security-Policy", "default-src 'none'")
        return response

"""The checks every request passes before it reaches a route (an ASGI middleware), and the
headers every response carries.

Loopback is not a security boundary: any web page the user opens can send requests to
127.0.0.1, and a DNS-rebinding page can even read the answers. So, in this order:

1. Host. Without a token, the Host header must be a loopback name (localhost, 127.0.0.1,
   [::1], any port) or one given with `--allowed-host`; a rebinding page's requests carry its
   own name and are refused (403).
2. Cross-site. A request whose `Origin` is not this server (or is `null`), or whose
   `Sec-Fetch-Site` says cross-site or same-site, is refused (403); only a navigation to the
   page itself (`GET /`, a link from elsewhere) may come from another site.
3. Token (with `--token`). `Authorization: Bearer TOKEN`, or the session cookie the page gets:
   opening `/?token=TOKEN` sets it (HttpOnly, SameSite=Strict) and redirects to `/`, so the
   token leaves the address bar and the history. A token in any other URL is refused.
4. State changes (POST, DELETE) need `Content-Type: application/json` (uploads:
   `application/octet-stream`; a cross-site form cannot send either without the browser
   asking first) and, unless the bearer token came with them, the server's CSRF token in
   `X-TRT-MPQ-CSRF`: the page has it in a meta tag, API clients get it from `GET
   /api/session`.

Every response carries a Content-Security-Policy without inline script or style,
X-Frame-Options DENY, X-Content-Type-Options nosniff and Referrer-Policy no-referrer. The
access log (`-v`) names the path without its query.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams

access = logging.getLogger("trt_mpq.serve.access")

CSRF_HEADER = "x-trt-mpq-csrf"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(host: str) -> str:
    """The name of a Host header's value, without its port ('[::1]:8765' -> '[::1]')."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def session_cookie(token: str) -> str:
    """The session cookie's value: derived from the token, never the token itself."""
    return hmac.new(token.encode(), b"trt-mpq serve session", hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Guard:
    def __init__(self, app, *, token: str | None, csrf: str, port: int,
                 allowed_hosts: frozenset[str] = frozenset()) -> None:
        self.app, self.token, self.csrf = app, token, csrf
        self.allowed = LOOPBACK_NAMES | {host_name(h) for h in allowed_hosts}
        self.cookie = f"trt_mpq_session_{port}"  # cookies are per host, not per port
        self.session = session_cookie(token) if token else None

    # -- the checks ----------------------------------------------------------------------------
    def refusal(self, scope, headers: Headers) -> tuple[int, str, list] | None:
        """(status, message, extra headers) for a request to refuse, or None (and
        scope["trt_mpq_auth"] says how it authenticated: none, bearer or cookie)."""
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "")
        if not self.token and host_name(host) not in self.allowed:
            return 403, (f"this server answers to localhost, 127.0.0.1 and [::1] only, not "
                         f"{host_name(host)[:100]!r}: open it as http://127.0.0.1:PORT/, or "
                         "start it with --allowed-host NAME (a proxy's name) or a token"), []
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            if origin == "null" or not parts.netloc or \
                    parts.netloc.lower() != host.strip().lower():
                return 403, ("cross-origin requests are refused: use the page this server "
                             "serves, or an API client (curl) that sends no Origin"), []
        site = headers.get("sec-fetch-site", "")
        navigation = method == "GET" and path == "/" and \
            headers.get("sec-fetch-mode") == "navigate"
        if site in ("cross-site", "same-site") and not navigation:
            return 403, ("requests from other sites are refused (Sec-Fetch-Site: "
                         f"{site}): use the page this server serves"), []
        auth = "none"
        if self.token:
            given = QueryParams(scope.get("query_string", b"")).get("token")
            bearer = headers.get("authorization", "")
            cookies = _cookies(headers.get("cookie", ""))
            if given is not None:
                if path == "/" and method == "GET" and _same(given, self.token):
                    return 303, "signed in; the page is at /", [
                        (b"location", b"/"),
                        (b"set-cookie", f"{self.cookie}={self.session}; Path=/; HttpOnly; "
                                        "SameSite=Strict".encode())]
                return 401, ("a token goes in 'Authorization: Bearer <token>', or open the "
                             "page once as /?token=<token> (it then uses a cookie)"), []
            if bearer.lower().startswith("bearer ") and _same(bearer[7:].strip(), self.token):
                auth = "bearer"
            elif self.cookie in cookies and _same(cookies[self.cookie], self.session):
                auth = "cookie"
            else:
                return 401, ("this server needs its token: send 'Authorization: Bearer "
                             "<token>', or open the page as /?token=<token>"), []
        scope["trt_mpq_auth"] = auth
        if method in STATE_CHANGING:
            want = "application/octet-stream" if path == "/api/uploads" else "application/json"
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != want:
                return 415, (f"send this request with 'Content-Type: {want}' (got "
                             f"{ctype[:60] or 'none'!r})"), []
            if auth != "bearer" and not _same(headers.get(CSRF_HEADER, ""), self.csrf):
                return 403, ("a request that changes something needs the header "
                             "'X-TRT-MPQ-CSRF: <token>': the page sends it; API clients take "
                             "it from GET /api/session (or use the server's bearer token). "
                             "If the page is open, reload it (the server restarted)"), []
        return None

    # -- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # the service has none: refused before any check
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [
                    *message.get("headers", []),
                    *((k, v) for k, v in SECURITY_HEADERS if k not in have)]}
            await send(message)

        headers = Headers(scope=scope)
        refused = self.refusal(scope, headers)
        try:
            if refused is None:
                await self.app(scope, receive, send_with_headers)
                return
            code, message, extra = refused
            body = json.dumps({"error": message}).encode()
            await send_with_headers({"type": "http.response.start", "status": code, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), *extra,
                *([(b"connection", b"close")] if scope["method"] in STATE_CHANGING else [])]})
            await send_with_headers({"type": "http.response.body", "body": body})
        finally:
            client = scope.get("client") or ("-", 0)
            access.debug("%s %s %s %d %.3fs", client[0], scope["method"], scope["path"],
                         status[0], time.perf_counter() - started)


def _cookies(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out.setdefault(name, value)
    return out


__all__ = ["CSRF_HEADER", "Guard", "LOOPBACK_NAMES", "SECURITY_HEADERS", "host_name",
           "session_cookie"]

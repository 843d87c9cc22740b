"""Security headers on every response: the page and the API alike.

The page loads only its own script and style sheet (no inline code), so its Content Security
Policy allows nothing else; JSON, CSV and error bodies are never meant to be rendered as a document,
so theirs allows nothing at all. No response may be framed (clickjacking) or MIME-sniffed, and
answers and histories are never cached by a shared cache.
"""

from __future__ import annotations

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
DATA_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"

_COMMON = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]


class SecurityHeaders:
    """Adds the headers to each response (pure ASGI, so streamed downloads stay unbuffered).

    Args:
        private_prefix: responses under this path (a client's uploads and answers) get
            ``Cache-Control: no-store``.
    """

    def __init__(self, app, private_prefix: str = "/uploads"):
        self.app = app
        self.private_prefix = private_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        private = scope.get("path", "").startswith(self.private_prefix)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                csp = PAGE_CSP if content_type.startswith(b"text/html") else DATA_CSP
                headers += [(b"content-security-policy", csp.encode("ascii")), *_COMMON]
                if private and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, send_with_headers)

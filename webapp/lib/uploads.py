"""The upload size limit (``settings.UPLOAD_MAX_BYTES``), enforced while the request is read.

Django does not cap the size of uploaded files, so two small pieces do it:

- ``UploadLimitHandler``, first in ``FILE_UPLOAD_HANDLERS``, stops the multipart parser with
  ``StopUpload(connection_reset=True)`` as soon as the request's Content-Length or the file bytes
  received exceed the limit: the rest of the body is neither read nor written to a temporary file,
  and the view finds ``upload_limit_error(request)`` set and shows it as a form error.
- ``UploadLimitASGIMiddleware`` wraps the ASGI application. Django's ASGI handler reads the whole
  body into a temporary file *before* any upload handler runs; the wrapper ends the body once it
  passes the limit (plus room for the other form fields), so under uvicorn too an oversize upload
  is never fully read. The handler then reports it as above, as the Content-Length is over the limit.
  A body sent without Content-Length (chunked transfer encoding), which Django would not parse at
  all, is spooled by the wrapper up to the same cap: within it, Django gets it with its length;
  past it, reading stops and the request is marked in its ASGI scope, which
  ``upload_limit_error`` reads too, so the form names the limit instead of "This field is required."

Production also sets the limit at the reverse proxy (DESIGN.md section 5).
"""
from __future__ import annotations

import asyncio
import tempfile

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from webapp.lib.formatting import human_size

#: Room for the form fields, boundaries and part headers that travel with the file.
MULTIPART_ALLOWANCE = 64 * 1024
#: Attribute set on the request when the handler stopped an upload (its value: the limit).
REQUEST_FLAG = "upload_limit_exceeded"
#: Key set in the ASGI scope when the middleware stopped a body sent without Content-Length.
SCOPE_FLAG = "netadapt.upload_limit_exceeded"
#: Bytes of a body without Content-Length kept in memory while it is spooled; the rest goes to disk.
SPOOL_MEMORY_BYTES = 1 << 20
#: Size of the body messages a spooled body is passed on in.
REPLAY_CHUNK_BYTES = 1 << 16


def limit_message(limit: int) -> str:
    return f"The file is larger than the {human_size(limit)} limit."


def upload_limit_context() -> dict:
    """What an upload page shows of the limit: ``limit`` for people, ``max_bytes`` for its script."""
    return {"limit": human_size(settings.UPLOAD_MAX_BYTES), "max_bytes": settings.UPLOAD_MAX_BYTES}


def upload_limit_error(request) -> str | None:
    """The message to show when this request's upload was stopped for its size, else None."""
    limit = getattr(request, REQUEST_FLAG, None)
    if limit is None:  # a chunked body stopped by UploadLimitASGIMiddleware
        limit = (getattr(request, "scope", None) or {}).get(SCOPE_FLAG)
    return None if limit is None else limit_message(limit)


class UploadLimitHandler(FileUploadHandler):
    """Stops reading a multipart request whose files exceed ``settings.UPLOAD_MAX_BYTES``.

    It stores nothing itself (``receive_data_chunk`` passes chunks on to the next handler).
    """

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.limit = settings.UPLOAD_MAX_BYTES
        self.received = 0
        # Raising here would escape the parser (it only catches StopUpload once parts are read),
        # so the first file part stops the upload instead; the fields before it are kept.
        self.body_too_large = content_length > self.limit + MULTIPART_ALLOWANCE
        return None

    def new_file(self, *args, **kwargs):
        super().new_file(*args, **kwargs)
        if self.body_too_large:
            self._stop()

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self._stop()
        return raw_data

    def file_complete(self, file_size):
        return None  # the next handler builds the file

    def _stop(self):
        if self.request is not None:
            setattr(self.request, REQUEST_FLAG, self.limit)
        # connection_reset: do not read (and discard) the rest of the body.
        raise StopUpload(connection_reset=True)


class UploadLimitASGIMiddleware:
    """Ends an HTTP request body after ``UPLOAD_MAX_BYTES + MULTIPART_ALLOWANCE`` bytes.

    Usage in asgi.py: ``"http": UploadLimitASGIMiddleware(django_asgi_app)``. The application sees
    a body that ends early; with its Content-Length over the limit, ``UploadLimitHandler`` stops
    the parser at the file part and the page shows the limit. Bodies within the limit pass as is.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = settings.UPLOAD_MAX_BYTES + MULTIPART_ALLOWANCE
        if not any(name.lower() == b"content-length" for name, _ in scope.get("headers", ())):
            return await self._without_length(scope, receive, send, cap)
        received = 0
        truncated = False

        async def limited_receive():
            nonlocal received, truncated
            if truncated:
                # Django listens for a disconnect once the body has ended; the next message would
                # be more body, so wait (until Django cancels the wait) instead of reading it.
                await asyncio.Event().wait()
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                room = cap - received
                received += len(body)
                if received > cap:
                    truncated = True
                    return {"type": "http.request", "body": body[:max(room, 0)], "more_body": False}
            return message

        return await self.app(scope, limited_receive, send)

    async def _without_length(self, scope, receive, send, cap: int):
        """A body without Content-Length (chunked), spooled up to ``cap`` and passed on with a
        Content-Length. Past ``cap`` reading stops: the application gets the first ``cap`` bytes
        under the length seen so far (over the limit, so ``UploadLimitHandler`` stops at the file
        part and keeps the fields before it, as for a truncated body) and ``scope[SCOPE_FLAG]``."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES,
                                           dir=settings.FILE_UPLOAD_TEMP_DIR) as spool:
            size, more, ended = 0, True, None
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away: pass that on
                    ended = message
                    break
                body = message.get("body", b"")
                spool.write(body[:max(cap - size, 0)])
                size += len(body)
                more = message.get("more_body", False)
                if size > cap:
                    scope[SCOPE_FLAG] = settings.UPLOAD_MAX_BYTES
                    break
            truncated = SCOPE_FLAG in scope
            if size and ended is None:
                scope = {**scope, "headers": [*scope.get("headers", ()),
                                              (b"content-length", str(size).encode())]}
            spool.seek(0)
            passed = 0
            stored = min(size, cap)

            async def replay():
                nonlocal passed
                if ended is not None:
                    return ended
                if passed < stored or (passed == 0 and stored == 0):
                    chunk = spool.read(REPLAY_CHUNK_BYTES)
                    passed += len(chunk) or 1  # an empty body is one empty message
                    return {"type": "http.request", "body": chunk, "more_body": passed < stored}
                if truncated:  # the rest of the body was never read: wait, as for a truncated one
                    await asyncio.Event().wait()
                return await receive()

            return await self.app(scope, replay, send)

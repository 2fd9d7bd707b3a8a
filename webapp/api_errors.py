"""Bad input and unexpected errors in the REST API, handled in one place (REST_FRAMEWORK settings).

- ``SafeJSONParser`` parses every JSON body with the limits of ``devices.agent.safe_json`` (no
  nesting deeper than 32 levels, no NaN, no number too large for a float or longer than 100
  characters, UTF-8 only, no unpaired surrogates) and at most ``DATA_UPLOAD_MAX_MEMORY_SIZE``
  bytes: a hostile body is a 400 naming the problem, never an exception.
- ``handle_exception`` is DRF's handler, a 400 for what Django answers with one (a body over
  ``DATA_UPLOAD_MAX_MEMORY_SIZE``, a suspicious request), and for anything else (a bug) a JSON 500
  that reveals nothing, whatever ``DEBUG`` says: the traceback goes to the log.

- ``APIErrorMiddleware`` does the same for the plain Django views under ``/api/`` (the agent's
  pairing and file endpoints), which DRF's handler does not reach.

Kept apart from webapp.lib.api: DRF imports these while ``rest_framework.views`` is still loading.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from rest_framework import status
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.response import Response

from devices.agent import safe_json

logger = logging.getLogger(__name__)

SERVER_ERROR = "The server could not handle this request (an unexpected error; it has been logged)."


class SafeJSONParser(JSONParser):
    """DRF's JSON parser with the limits of ``safe_json.loads`` and a body of at most
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes (Django's own limit for bodies that are not files)."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        data = (stream.read() if limit is None else stream.read(limit + 1)) if stream is not None else b""
        if limit is not None and len(data) > limit:
            raise ParseError(f"JSON parse error - the body is larger than {limit} bytes")
        encoding = get_encoding(parser_context or {})
        try:
            text = data if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else data.decode(encoding)
            return safe_json.loads(text)
        except UnicodeDecodeError:
            raise ParseError(f"JSON parse error - the body is not {encoding} text") from None
        except safe_json.JSONInputError as error:
            raise ParseError(f"JSON parse error - {error}") from None


def handle_exception(exc: Exception, context: dict) -> Response:
    """DRF's answer to its own exceptions; a JSON 500 without details for any other (logged)."""
    # Not at the top: rest_framework.views reads the parser setting, which names this module.
    from rest_framework.views import exception_handler, set_rollback

    response = exception_handler(exc, context)
    if response is not None:
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} "
                                   "bytes, the limit for bodies that are not file uploads."},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, (SuspiciousOperation, BadRequest)):  # Django answers these with a 400 too
        return Response({"detail": "Bad request."}, status=status.HTTP_400_BAD_REQUEST)
    set_rollback()
    view = context.get("view")
    logger.error("unexpected error in %s", type(view).__name__ if view is not None else "the API", exc_info=exc)
    return Response({"detail": SERVER_ERROR}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)


class APIErrorMiddleware:
    """A JSON 500 without details, instead of an HTML page, for an unexpected exception of any
    view under ``/api/`` (DRF's views answer through ``handle_exception`` before this is reached)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception: Exception) -> JsonResponse | None:
        if not request.path.startswith("/api/") or isinstance(
                exception, (Http404, SuspiciousOperation, BadRequest, PermissionDenied)):
            return None  # Django's own answers (404, 400, 403) are right for these
        logger.error("unexpected error in %s", request.path, exc_info=exception)
        return JsonResponse({"detail": SERVER_ERROR}, status=500)

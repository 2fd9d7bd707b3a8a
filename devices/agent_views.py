"""HTTP endpoints of the agent program (docs/agent.md), next to its websocket (devices.consumers).

- ``POST /api/v1/agent/pair``: ``{"code", "facts"}`` -> ``{"device", "token", "name", "runtime",
  "threads"}``; a bad, expired or used code is a 400 with the reason. No session and no CSRF
  token: the one-time code is the credential. Failed attempts are limited per client address.
- ``GET /api/v1/agent/requests/<id>/files`` with ``Authorization: Token <device token>``: the zip
  of a request's ONNX files (devices.agent_files). Only the open requests of the token's own
  device: anything else is a 404; a missing, unknown or revoked token a 401. Files that cannot
  be built or read (a request stored before requests carried their networks' files, files gone)
  fail the request: a 500.
- ``GET /devices/agent.pyz`` (signed-in users): the agent program as one file.

These are plain Django views, not REST framework ones: the API's token authentication would read
the device token as a user token and refuse it.
"""
from __future__ import annotations

import json
import logging

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from devices.agent import safe_json
from devices.agent.protocol import MAX_FACTS_CHARS, token_of
from devices.agent_files import ZIPAPP_NAME, agent_zipapp, request_archive
from devices.lut import remote_version
from devices.models import MeasurementRequest
from devices.pairing import PairingError, device_for_token, redeem
from devices.requests import fail_request, files_missing
from webapp.lib.ratelimit import attempt, pairing_limits, succeeded

logger = logging.getLogger(__name__)

MAX_PAIR_BODY_BYTES = 64 * 1024


def _detail(message: str, status: int, **headers) -> JsonResponse:
    response = JsonResponse({"detail": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


@csrf_exempt
@require_POST
def pair(request):
    """Every attempt counts against the address's limit until it pairs (then it is given back)."""
    counts = pairing_limits(request)
    refusal = attempt(counts)
    if refusal is not None:
        return _detail(refusal.message("pairing"), 429, Retry_After=str(refusal.retry_after))
    if len(request.body) > MAX_PAIR_BODY_BYTES:
        return _detail("request body too large", 400)
    try:
        body = safe_json.loads(request.body)
    except safe_json.JSONInputError as error:
        return _detail(f'send JSON: {{"code": "...", "facts": {{...}}}} ({error})', 400)
    code = body.get("code") if isinstance(body, dict) else None
    facts = body.get("facts") if isinstance(body, dict) else None
    facts = {} if facts is None else facts
    if not isinstance(code, str) or not code.strip() or len(code) > 64:
        return _detail('"code" must be the pairing code shown on the device\'s page', 400)
    if not isinstance(facts, dict) or len(json.dumps(facts)) > MAX_FACTS_CHARS:
        return _detail(f'"facts" must be an object of at most {MAX_FACTS_CHARS} characters as JSON', 400)
    try:
        device, token = redeem(code, facts)
    except PairingError as error:
        return _detail(str(error), 400)
    succeeded(counts)
    logger.info("device %s paired with an agent", device.pk)
    return JsonResponse({"device": device.pk, "token": token, "name": device.name,
                         "runtime": device.runtime, "threads": device.threads})


@require_GET
def request_files(request, id: int):
    device = device_for_token(token_of(request.headers.get("Authorization")))
    if device is None:
        return _detail("send the device token: Authorization: Token <token> (a revoked device must "
                       "be paired again)", 401, WWW_Authenticate="Token")
    measurement = MeasurementRequest.objects.filter(
        pk=id, device=device, status__in=MeasurementRequest.OPEN_STATUSES).first()
    if measurement is None:
        return _detail("no open measurement request of this device has this id", 404)
    try:
        data, manifest = request_archive(measurement, remote_version(device) or None)
    except Exception as error:  # files that cannot be built or read: they never will be
        logger.exception("building the files of measurement request %s failed", measurement.pk)
        why = files_missing(measurement)
        fail_request(measurement, why or f"the server could not build or read the request's ONNX files: "
                                         f"{type(error).__name__}: {error}")
        return _detail("the server could not build or read this request's files; the request has failed", 500)
    response = HttpResponse(data, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="request-{measurement.pk}.zip"'
    return response


@login_required
@require_GET
def agent_download(request):
    response = HttpResponse(agent_zipapp(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{ZIPAPP_NAME}"'
    return response

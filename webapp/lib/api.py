"""Pieces every REST API module shares: the token endpoint, form errors as 400 bodies, request
serializers (for the OpenAPI schema) made from the pages' forms, and documented error bodies.

The API validates with the pages' own forms, so a rule lives in one place; ``form_serializer``
derives the schema's request fields from the same forms, so the documentation cannot drift.
"""
from __future__ import annotations

from django import forms
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from webapp.lib.accounts import rotate_token
from webapp.lib.ratelimit import refusal_of


def form_errors(form: forms.BaseForm) -> dict[str, list[str]]:
    """A form's errors in DRF's shape: field name → messages (``non_field_errors`` for the rest)."""
    return {("non_field_errors" if field == "__all__" else field): [str(m) for m in messages]
            for field, messages in form.errors.items()}


def invalid(errors: dict[str, list[str]]) -> Response:
    return Response(errors, status=status.HTTP_400_BAD_REQUEST)


def detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


def request_fields(request) -> dict:
    """The request's fields as a plain dict (files left out: forms take them separately)."""
    data = request.data
    if hasattr(data, "dict"):  # a QueryDict (form or multipart): one value per field
        return {key: value for key, value in data.items() if key not in request.FILES}
    return dict(data) if isinstance(data, dict) else {}


def form_serializer(form_class: type[forms.BaseForm], name: str, *, initial_is_default: bool = False,
                    ids: dict[str, str] | None = None) -> type[serializers.Serializer]:
    """A serializer with the form's fields, for the schema only (the form validates).

    ``initial_is_default``: a field with an initial value may be left out and takes that value.
    ``ids``: what the id of each ``ModelChoiceField`` refers to (its description).
    """
    attrs = {}
    for field_name, field in form_class.base_fields.items():
        optional = not field.required or (initial_is_default and field.initial is not None)
        help_text = str(field.help_text or "")
        kwargs = {"required": not optional, "help_text": help_text or None}
        if initial_is_default and field.initial is not None:
            kwargs["default"] = field.initial
        if isinstance(field, forms.ModelChoiceField):
            kwargs["help_text"] = " ".join(filter(None, [(ids or {}).get(field_name), help_text])) or None
            attrs[field_name] = serializers.IntegerField(**kwargs)
        elif isinstance(field, forms.ChoiceField):
            attrs[field_name] = serializers.ChoiceField(choices=list(field.choices), **kwargs)
        elif isinstance(field, forms.FileField):
            attrs[field_name] = serializers.FileField(**kwargs)
        elif isinstance(field, forms.IntegerField):  # FloatField is one too
            number = serializers.FloatField if isinstance(field, forms.FloatField) else serializers.IntegerField
            attrs[field_name] = number(min_value=field.min_value, max_value=field.max_value, **kwargs)
        else:
            attrs[field_name] = serializers.CharField(max_length=getattr(field, "max_length", None),
                                                      allow_blank=optional, **kwargs)
    return type(name, (serializers.Serializer,), attrs)


class IgnoreFormatParameter(DefaultContentNegotiation):
    """JSON (errors) whatever ``?format=`` says: downloads use it for the file format, not DRF's
    renderer choice (which would answer an unknown one with 404)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class FileEndpointMixin:
    """Views that answer with a file: ``?format=`` is theirs, error bodies are JSON."""

    content_negotiation_class = IgnoreFormatParameter
    renderer_classes = [JSONRenderer]


DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})
VALIDATION_ERROR = OpenApiResponse(
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
     "example": {"budget": ["The budget must be positive."]}},
    description="Invalid input, nothing stored: one key per field in error (non_field_errors for "
                "the request as a whole), each with its messages.")
NOT_FOUND = OpenApiResponse(DETAIL, description="Not found, or not yours.")
RATE_LIMITED = OpenApiResponse(DETAIL, description="Too many failed attempts: wait the Retry-After header's "
                                                   "seconds.")
VALIDATION_ERROR_TOKEN = OpenApiResponse(
    {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    description="Wrong credentials (non_field_errors) or missing fields.")


class TokenView(ObtainAuthToken):
    """``POST username, password`` → ``{"token": "..."}``; send it as ``Authorization: Token <token>``.

    Wrong credentials: 400 with ``non_field_errors``; too many failed attempts for the account or
    from the address (``webapp.lib.ratelimit``): 429 with ``Retry-After``. The token is the same on
    every call until it is rotated (``/api/v1/token/rotate``, the token page) or the password
    changes.
    """

    authentication_classes = []  # a logged-in browser's session must not make this a CSRF check
    # ObtainAuthToken names DRF's own parsers: take the project's (JSON with limits) instead.
    parser_classes = api_settings.DEFAULT_PARSER_CLASSES

    @extend_schema(responses={200: inline_serializer("Token", {"token": serializers.CharField()}),
                              400: VALIDATION_ERROR_TOKEN, 429: RATE_LIMITED})
    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid():
            refusal = refusal_of(request)
            if refusal is not None:
                return too_many(refusal.message("log-in"), refusal.retry_after)
            return invalid(serializer.errors)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})


class TokenRotate(APIView):
    """``POST`` (authenticated) → ``{"token": "..."}``: a new token; the one used until now (and
    any other of the user's) stops working at once."""

    @extend_schema(request=None, responses={200: inline_serializer("NewToken", {"token": serializers.CharField()})})
    def post(self, request):
        return Response({"token": rotate_token(request.user)})


def too_many(message: str, retry_after: int) -> Response:
    return Response({"detail": message}, status=status.HTTP_429_TOO_MANY_REQUESTS,
                    headers={"Retry-After": str(retry_after)})

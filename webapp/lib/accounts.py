"""Accounts: the sign-up page and the account URLs (log in, log out and password change are
Django's own views), the API token page, and what an account may see of the rows that have an
``owner``.

Log-in is limited (``webapp.lib.ratelimit``): too many failures for an account or from an address
answer 429 with the form's error saying how long to wait. The API token is rotated on the token
page (``/accounts/token/``) or ``POST /api/v1/token/rotate``; a password change ends it (the
next ``/api/v1/token`` call or the page gives a new one). Either way the old one stops working
at once.

Rows are the account's own or shared (``owner`` None: built-in datasets, the system device).
A stranger's row is a 404, not a 403, so ids reveal nothing; shared rows are read-only.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Model, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods
from rest_framework.authtoken.models import Token

from webapp.lib.ratelimit import refusal_of


def owned_or_shared(model: type[Model], user) -> QuerySet:
    """The user's own rows of ``model`` and the shared ones; none for an anonymous user."""
    if not user.is_authenticated:
        return model.objects.none()
    return model.objects.filter(Q(owner=user) | Q(owner__isnull=True))


def get_visible_or_404(model: type[Model], user, pk, *, write: bool = False,
                       read_only: str = "shared rows are read-only") -> Model:
    """Row ``pk`` if the user may see it (and change it, with ``write``: ``read_only`` is the 404's
    message for a shared row)."""
    row = get_object_or_404(owned_or_shared(model, user), pk=pk)
    if write and row.owner_id is None:
        raise Http404(read_only)
    return row


def get_owned_or_404(model: type[Model], user, pk) -> Model:
    """Row ``pk`` of ``model`` if the user owns it."""
    return get_object_or_404(model, pk=pk, owner_id=user.pk)


@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect("home")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


class LimitedAuthenticationForm(AuthenticationForm):
    """The log-in form, saying so when the failed-attempt limit refused the attempt."""

    def clean(self):
        try:
            return super().clean()
        except ValidationError:
            refusal = refusal_of(self.request)
            if refusal is not None:
                raise ValidationError(refusal.message("log-in"), code="rate_limited") from None
            raise


class LoginView(auth_views.LoginView):
    form_class = LimitedAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form):
        response = super().form_invalid(form)
        refusal = refusal_of(self.request)
        if refusal is not None:
            response.status_code = 429
            response["Retry-After"] = str(refusal.retry_after)
        return response


# --------------------------------------------------------------------------- API token


def rotate_token(user) -> str:
    """A new API token for ``user``; the old one (if any) stops working at once."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user).key


def end_tokens_on_password_change(sender, instance, **kwargs) -> None:
    """``post_save`` of a user: a new password (``set_password`` then ``save``; not a hash
    upgrade at log-in) deletes the user's API token."""
    if getattr(instance, "_password", None) is not None:  # Django's own mark of a changed password
        Token.objects.filter(user_id=instance.pk).delete()


@login_required
@require_http_methods(["GET", "POST"])
def api_token(request):
    """GET: whether the user has a token (it is shown only when made). POST: rotate it."""
    new_key = None
    if request.method == "POST":
        new_key = rotate_token(request.user)
        messages.success(request, "Made a new API token; the old one no longer works.")
    token = Token.objects.filter(user=request.user).first()
    response = render(request, "registration/api_token.html", {"token": token, "new_key": new_key})
    response["Cache-Control"] = "no-store"
    return response


urlpatterns = [
    path("signup/", signup, name="signup"),
    path("login/", LoginView.as_view(), name="login"),
    path("token/", api_token, name="api_token"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only
    path("password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
]

"""Accounts: the sign-up page and the account URLs (log in, log out and password change are
Django's own views), and what an account may see of the rows that have an ``owner``.

Rows are the account's own or shared (``owner`` None: built-in datasets, the system device).
A stranger's row is a 404, not a 403, so ids reveal nothing; shared rows are read-only.
"""
from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import UserCreationForm
from django.db.models import Model, Q, QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods


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


urlpatterns = [
    path("signup/", signup, name="signup"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only
    path("password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
]

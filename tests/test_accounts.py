"""Sign up, log in, log out, password change; the dashboard shows only the user's jobs."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "another long passphrase 42"


def logged_in_user_id(client):
    return client.session.get("_auth_user_id")


def test_it_signs_up_and_logs_in(client):
    response = client.post(reverse("signup"), {"username": "carol", "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("home")
    carol = get_user_model().objects.get(username="carol")
    assert logged_in_user_id(client) == str(carol.pk)
    assert "carol" in client.get(reverse("home")).content.decode()


def test_it_rejects_mismatched_passwords_at_sign_up(client):
    response = client.post(reverse("signup"), {"username": "carol", "password1": PASSWORD, "password2": "other"})
    assert response.status_code == 200
    assert response.context["form"].errors
    assert not get_user_model().objects.filter(username="carol").exists()


def test_it_logs_in(client, owner):
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("home")
    assert logged_in_user_id(client) == str(owner.pk)


def test_it_rejects_a_wrong_password(client, owner):
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert logged_in_user_id(client) is None


def test_it_logs_out_with_post_only(client, owner):
    client.force_login(owner)
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert response.url == reverse("login")
    assert logged_in_user_id(client) is None


def test_it_changes_the_password(client, owner):
    client.force_login(owner)
    response = client.post(reverse("password_change"), {
        "old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert response.status_code == 302
    assert response.url == reverse("password_change_done")
    owner.refresh_from_db()
    assert owner.check_password(NEW_PASSWORD)
    assert logged_in_user_id(client) == str(owner.pk)  # still logged in


def test_it_keeps_the_password_when_the_old_one_is_wrong(client, owner):
    client.force_login(owner)
    response = client.post(reverse("password_change"), {
        "old_password": "wrong", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert response.status_code == 200
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


@pytest.mark.parametrize("name", ["home", "password_change", "password_change_done"])
def test_it_requires_login(client, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response.url == f"{reverse('login')}?next={url}"


def test_it_lists_only_the_users_jobs(client, owner, stranger, make_job):
    own = make_job(owner)
    make_job(stranger)
    client.force_login(owner)
    response = client.get(reverse("home"))
    assert response.status_code == 200
    assert list(response.context["jobs"]) == [own]
    assert "bob's net" not in response.content.decode()
    assert "alice&#x27;s net" in response.content.decode()


def test_it_shows_the_empty_state(client, owner, stranger, make_job):
    make_job(stranger)
    client.force_login(owner)
    response = client.get(reverse("home"))
    assert list(response.context["jobs"]) == []
    assert "No jobs yet" in response.content.decode()


def test_it_offers_log_out_and_password_change_in_the_user_menu(client, owner):
    client.force_login(owner)
    page = client.get(reverse("home")).content.decode()
    assert f'action="{reverse("logout")}"' in page
    assert f'href="{reverse("password_change")}"' in page
    assert "/static/css/app.css" in page

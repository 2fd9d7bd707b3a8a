"""Device pages, mounted at ``devices/``."""
from django.urls import path

from devices import views

urlpatterns = [
    path("", views.device_list, name="device_list"),
    path("add/", views.device_add, name="device_add"),
    path("add-phone/", views.phone_add, name="phone_add"),
    path("phone/", views.phone_page, name="phone_page"),
    path("<int:pk>/", views.device_detail, name="device_detail"),
    path("<int:pk>/edit/", views.device_edit, name="device_edit"),
    path("<int:pk>/delete/", views.device_delete, name="device_delete"),
    path("<int:pk>/pair/", views.device_pair, name="device_pair"),
    path("<int:pk>/revoke/", views.device_revoke, name="device_revoke"),
    path("<int:pk>/lut/export/", views.device_lut_export, name="device_lut_export"),
    path("<int:pk>/lut/import/", views.device_lut_import, name="device_lut_import"),
]

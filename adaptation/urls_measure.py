"""Measurement pages, mounted at ``devices/measurements/`` (``adaptation.views_measure``)."""
from django.urls import path

from adaptation import views_measure

urlpatterns = [
    path("start/", views_measure.measurement_start, name="measurement_start"),
    path("<int:pk>/", views_measure.measurement_detail, name="measurement_detail"),
    path("<int:pk>/cancel/", views_measure.measurement_cancel, name="measurement_cancel"),
]

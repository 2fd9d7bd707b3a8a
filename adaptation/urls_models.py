"""Model pages, mounted at ``models/``."""
from django.urls import path

from adaptation import views_models

urlpatterns = [
    path("", views_models.model_list, name="model_list"),
    path("upload/", views_models.model_upload, name="model_upload"),
    path("<int:pk>/", views_models.model_detail, name="model_detail"),
    path("<int:pk>/delete/", views_models.model_delete, name="model_delete"),
    path("<int:pk>/status/", views_models.model_status, name="model_status"),
]

"""Dataset pages, mounted at ``datasets/``."""
from django.urls import path

from adaptation import views_datasets

urlpatterns = [
    path("", views_datasets.dataset_list, name="dataset_list"),
    path("upload/", views_datasets.dataset_upload, name="dataset_upload"),
    path("<int:pk>/", views_datasets.dataset_detail, name="dataset_detail"),
    path("<int:pk>/delete/", views_datasets.dataset_delete, name="dataset_delete"),
    path("<int:pk>/status/", views_datasets.dataset_status, name="dataset_status"),
]

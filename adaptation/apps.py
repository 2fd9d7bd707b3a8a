from django.apps import AppConfig


class AdaptationConfig(AppConfig):
    """Models, datasets and adaptation jobs (the algorithm itself is adaptation.netadapt)."""

    name = "adaptation"
    verbose_name = "Adaptation"

from django.apps import AppConfig


class AdaptationConfig(AppConfig):
    """Models, datasets and adaptation jobs (the algorithm itself is adaptation.netadapt)."""

    name = "adaptation"
    verbose_name = "Adaptation"

    def ready(self) -> None:
        # Here, not at the top: the receivers and the device page's section load models, which
        # needs the app registry ready.
        from adaptation import device_sections, receivers
        from devices import page_sections, usage
        from devices.signals import request_ended

        request_ended.connect(receivers.request_ended, dispatch_uid="adaptation-request-ended")
        page_sections.register("adaptation.latency_chart", device_sections.latency_chart)
        usage.register("adaptation.jobs", "job", "jobs", device_sections.jobs_on)

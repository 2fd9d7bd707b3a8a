"""Forms of the device pages: a device's settings, and a look-up-table file to import.

``MAX_THREADS`` lives here so the pages, the REST API and the table import share one limit.
"""
from __future__ import annotations

from django import forms
from django.conf import settings

from devices.models import Device
from webapp.lib.formatting import human_size
from webapp.lib.forms import UploadLimitMixin

#: Most measuring threads a device may ask for (phones and desktops have far fewer cores).
MAX_THREADS = 256


def lut_max_bytes() -> int:
    return int(settings.LUT_IMPORT_MAX_BYTES)


class DeviceForm(forms.ModelForm):
    """Name, runtime, threads and description of an agent device (add and edit)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The browser's runtime is a phone's alone (PhoneForm); an agent measures with the others.
        self.fields["runtime"].choices = [c for c in self.fields["runtime"].choices if c[0] != "onnxruntime-web"]

    threads = forms.IntegerField(min_value=1, max_value=MAX_THREADS, initial=1,
                                 help_text="Threads the runtime uses when measuring (the paper used one "
                                           "big core).")

    class Meta:
        model = Device
        fields = ["name", "runtime", "threads", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        help_texts = {"runtime": "The runtime the agent measures with; ONNX Runtime is what gets deployed."}


class PhoneForm(forms.ModelForm):
    """Name and description of a phone (add and edit): its browser decides runtime and threads."""

    class Meta:
        model = Device
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}
        help_texts = {"name": "For example: Pixel 8 of the lab."}


class LutImportForm(UploadLimitMixin, forms.Form):
    """A look-up-table JSON file (size-capped here; ``devices.lut_io`` checks its content).

    ``upload_error``: the server-wide upload limit's message when that stopped the request.
    """

    file = forms.FileField(label="Look-up table file (JSON)")
    overwrite = forms.BooleanField(
        required=False, label="Overwrite entries already in this device's table",
        help_text="Unticked, entries the device already has are kept and only new ones are added.")

    def clean_file(self):
        uploaded = self.cleaned_data["file"]
        if uploaded.size > lut_max_bytes():
            raise forms.ValidationError(
                f"The file is {human_size(uploaded.size)}: look-up tables up to "
                f"{human_size(lut_max_bytes())} can be imported.")
        return uploaded

"""Upload forms of the model and dataset pages.

Both take ``upload_error``: the message of ``webapp.uploads.upload_limit_error`` when the upload
handler stopped the request for its size; it replaces the file field's "required" error, since
the file never arrived.
"""
from __future__ import annotations

from pathlib import PurePath

from django import forms

from adaptation.models import ModelUpload
from adaptation.netadapt.models import ARCHITECTURES, WIDTH_SCALABLE_ARCHITECTURES

#: Input channels a dataset can have (grayscale or RGB images).
CHANNEL_CHOICES = [(1, "1 (grayscale)"), (3, "3 (RGB)")]
#: Dataset channels: decided from the images, or forced.
DATASET_CHANNEL_CHOICES = [("auto", "Automatic (grayscale when every image is)"),
                           ("1", "Grayscale (1 channel)"), ("3", "Colour (3 channels)")]
_GRAYSCALE = {"auto": None, "1": True, "3": False}


def _name_from_file(uploaded) -> str:
    return PurePath(uploaded.name).stem[:100] or "upload"


class UploadLimitMixin:
    """Shows the size-limit message on ``upload_field`` instead of "This field is required"."""

    upload_field = "file"

    def __init__(self, *args, upload_error: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.upload_error = upload_error

    def clean(self):
        cleaned = super().clean()
        if self.upload_error:
            self.errors.pop(self.upload_field, None)
            self.add_error(self.upload_field, self.upload_error)
        return cleaned


class ModelUploadForm(UploadLimitMixin, forms.ModelForm):
    """A built-in architecture and its weights; the pre-flight runs after this validates."""

    upload_field = "file"

    name = forms.CharField(max_length=100, required=False, help_text="Defaults to the file name.")
    arch = forms.ChoiceField(label="Architecture", choices=[(arch, arch) for arch in ARCHITECTURES])
    width = forms.FloatField(
        min_value=0.05, max_value=4.0, initial=1.0, label="Width multiplier",
        help_text=f"Only {', '.join(WIDTH_SCALABLE_ARCHITECTURES)} scale their width; "
                  "other architectures take 1.0.")
    num_classes = forms.IntegerField(min_value=2, max_value=100_000, label="Classes")
    in_channels = forms.TypedChoiceField(coerce=int, choices=CHANNEL_CHOICES, initial=3,
                                         label="Input channels")
    resolution = forms.IntegerField(min_value=8, max_value=1024, initial=32,
                                    label="Input resolution (px)",
                                    help_text="Images are square: resolution x resolution.")
    file = forms.FileField(
        label="Weights file",
        help_text="A file saved with torch.save(model.state_dict(), ...), or a checkpoint holding the "
                  "state dict under state_dict, model_state_dict or model.")

    class Meta:
        model = ModelUpload
        fields = ["name", "arch", "width", "num_classes", "in_channels", "resolution", "file"]

    def clean(self):
        cleaned = super().clean()
        arch, width = cleaned.get("arch"), cleaned.get("width")
        if arch and width is not None and arch not in WIDTH_SCALABLE_ARCHITECTURES and width != 1.0:
            self.add_error("width", f"{arch} has a fixed width: use 1.0 (only "
                                    f"{', '.join(WIDTH_SCALABLE_ARCHITECTURES)} scale their width).")
        if not cleaned.get("name") and cleaned.get("file"):
            cleaned["name"] = _name_from_file(cleaned["file"])
        return cleaned

    def save(self, commit: bool = False) -> ModelUpload:
        """The unsaved upload (source built-in, status checking): the pre-flight decides."""
        upload = super().save(commit=False)
        upload.source = "builtin"
        upload.status = "checking"
        if commit:
            upload.save()
        return upload


class DatasetUploadForm(UploadLimitMixin, forms.Form):
    """A zip of an image folder (``<class>/<image>``) and how to load its images."""

    upload_field = "archive"

    name = forms.CharField(max_length=100, required=False, help_text="Defaults to the file name.")
    resolution = forms.IntegerField(
        min_value=8, max_value=224, initial=32, label="Resolution (px)",
        help_text="Images are resized to resolution x resolution.")
    channels = forms.ChoiceField(choices=DATASET_CHANNEL_CHOICES, initial="auto")
    archive = forms.FileField(
        label="Zip archive", widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
        help_text="One folder per class holding its images (class_x/*.png; also jpg, bmp, gif, "
                  "webp), at the top of the archive or inside one folder. At least 2 classes of "
                  "3 images each.")

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("name") and cleaned.get("archive"):
            cleaned["name"] = _name_from_file(cleaned["archive"])
        return cleaned

    @property
    def grayscale(self) -> bool | None:
        """``load_archive_dataset``'s grayscale argument: None decides from the images."""
        return _GRAYSCALE[self.cleaned_data["channels"]]

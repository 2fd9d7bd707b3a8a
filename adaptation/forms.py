"""Upload forms of the model and dataset pages.

Both take ``upload_error``: the message of ``webapp.lib.uploads.upload_limit_error`` when the upload
handler stopped the request for its size; it replaces the file field's "required" error, since
the file never arrived.
"""
from __future__ import annotations

from pathlib import PurePath

from django import forms

from adaptation.models import ModelUpload
from adaptation.netadapt.models import ARCHITECTURES, WIDTH_SCALABLE_ARCHITECTURES
from webapp.lib.forms import UploadLimitMixin

#: Input channels a dataset can have (grayscale or RGB images).
CHANNEL_CHOICES = [(1, "1 (grayscale)"), (3, "3 (RGB)")]
#: Dataset channels: decided from the images, or forced.
DATASET_CHANNEL_CHOICES = [("auto", "Automatic (grayscale when every image is)"),
                           ("1", "Grayscale (1 channel)"), ("3", "Colour (3 channels)")]
_GRAYSCALE = {"auto": None, "1": True, "3": False}


def _name_from_file(uploaded) -> str:
    return PurePath(uploaded.name).stem[:100] or "upload"


#: Fields only a built-in architecture needs (an ONNX file carries its own input and classes).
BUILTIN_FIELDS = ("arch", "width", "num_classes", "in_channels", "resolution")


class ModelUploadForm(UploadLimitMixin, forms.ModelForm):
    """A built-in architecture and its weights, or an ONNX file; the pre-flight runs after this validates.

    ``source`` may be left out: a file whose name ends in ``.onnx`` is then an ONNX upload, any
    other file a built-in architecture's weights (the API's behaviour before ONNX uploads existed).
    The built-in fields are required for built-in architectures and ignored for ONNX files, whose
    classes, input channels and resolution the pre-flight reads from the file.
    """

    upload_field = "file"

    source = forms.ChoiceField(
        choices=ModelUpload.SOURCE_CHOICES, required=False, initial="builtin", widget=forms.RadioSelect,
        label="Model source",
        help_text="A built-in architecture with its PyTorch weights, or an ONNX file (left out: ONNX "
                  "when the file name ends in .onnx).")
    name = forms.CharField(max_length=100, required=False, help_text="Defaults to the file name.")
    arch = forms.ChoiceField(label="Architecture", required=False,
                             choices=[(arch, arch) for arch in ARCHITECTURES])
    width = forms.FloatField(
        min_value=0.05, max_value=4.0, initial=1.0, label="Width multiplier", required=False,
        help_text=f"Only {', '.join(WIDTH_SCALABLE_ARCHITECTURES)} scale their width; "
                  "other architectures take 1.0.")
    num_classes = forms.IntegerField(min_value=2, max_value=100_000, label="Classes", required=False)
    in_channels = forms.TypedChoiceField(coerce=int, choices=CHANNEL_CHOICES, initial=3, required=False,
                                         empty_value=None, label="Input channels")
    resolution = forms.IntegerField(min_value=8, max_value=1024, initial=32,  # preflight.MIN/MAX_RESOLUTION
                                    label="Input resolution (px)", required=False,
                                    help_text="Images are square: resolution x resolution.")
    file = forms.FileField(
        label="Weights or ONNX file",
        help_text="Built-in architecture: a file saved with torch.save(model.state_dict(), ...), or a "
                  "checkpoint holding the state dict under state_dict, model_state_dict or model. "
                  "ONNX: a .onnx file with one image input (N, C, H, W) and one output (N, classes).")

    class Meta:
        model = ModelUpload
        fields = ["source", "name", "arch", "width", "num_classes", "in_channels", "resolution", "file"]

    def clean(self):
        cleaned = super().clean()
        uploaded = cleaned.get("file")
        is_onnx_name = bool(uploaded) and PurePath(uploaded.name).suffix.lower() == ".onnx"
        source = cleaned.get("source") or ("onnx" if is_onnx_name else "builtin")
        cleaned["source"] = source
        if source == "onnx":
            # Read from the file by the pre-flight; whatever was sent for a built-in is ignored.
            for name in BUILTIN_FIELDS:
                self.errors.pop(name, None)
            cleaned.update(arch="", width=1.0, num_classes=None, in_channels=None, resolution=None)
        else:
            for name in BUILTIN_FIELDS:
                if cleaned.get(name) in (None, "") and name not in self.errors:
                    self.add_error(name, forms.Field.default_error_messages["required"])
            if is_onnx_name and "source" in self.data:
                self.add_error("source", f"{PurePath(uploaded.name).name} is an ONNX file: choose "
                                         "\"ONNX file\" to upload it.")
            arch, width = cleaned.get("arch"), cleaned.get("width")
            if arch and width is not None and arch not in WIDTH_SCALABLE_ARCHITECTURES and width != 1.0:
                self.add_error("width", f"{arch} has a fixed width: use 1.0 (only "
                                        f"{', '.join(WIDTH_SCALABLE_ARCHITECTURES)} scale their width).")
        if not cleaned.get("name") and uploaded:
            cleaned["name"] = _name_from_file(uploaded)
        return cleaned

    def save(self, commit: bool = False) -> ModelUpload:
        """The unsaved upload (status checking): the pre-flight decides."""
        upload = super().save(commit=False)
        upload.source = self.cleaned_data["source"]
        upload.status = ModelUpload.Status.CHECKING
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

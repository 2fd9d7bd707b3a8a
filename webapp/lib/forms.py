"""Form helpers the upload forms of both apps share."""
from __future__ import annotations


class UploadLimitMixin:
    """Shows the size-limit message on ``upload_field`` instead of "This field is required".

    ``upload_error`` is the message of ``webapp.lib.uploads.upload_limit_error`` when the upload
    handler stopped the request for its size: the file never arrived.
    """

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

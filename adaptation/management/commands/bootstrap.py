"""``manage.py bootstrap``: the shared rows every installation needs. Safe to run again.

- the system device "This server's CPU" (its facts refreshed on every run);
- the built-in datasets: scikit-learn digits always, Fashion-MNIST when its files are installed.
"""
from django.core.management.base import BaseCommand

from adaptation.models import Dataset
from adaptation.netadapt.data import fashion_mnist_available, load_dataset
from devices.measure.local import device_facts
from devices.models import SYSTEM_DEVICE_NAME, Device


class Command(BaseCommand):
    help = "Create the shared system device and the built-in datasets (idempotent)."

    def handle(self, *args, **options):
        self.ensure_system_device()
        for builtin_name, label in Dataset.BUILTIN_CHOICES:
            self.ensure_builtin_dataset(builtin_name, label)

    def ensure_system_device(self) -> None:
        facts = device_facts()
        device, created = Device.objects.update_or_create(
            owner=None, name=SYSTEM_DEVICE_NAME,
            defaults={"facts": facts},
            create_defaults={"facts": facts, "kind": "local", "runtime": "onnxruntime",
                             "threads": 1, "status": Device.Status.ONLINE,
                             "description": "The CPU of the machine that runs the workers."},
        )
        self.stdout.write(f"{'Created' if created else 'Updated'} system device {device.name!r} (#{device.pk})")

    def ensure_builtin_dataset(self, builtin_name: str, label: str) -> None:
        if Dataset.objects.filter(owner=None, builtin_name=builtin_name).exists():
            self.stdout.write(f"Built-in dataset {label!r} already present")
            return
        if builtin_name == "fashion_mnist" and not fashion_mnist_available():
            self.stdout.write(f"Skipped {label!r}: not installed (apt-get install dataset-fashion-mnist)")
            return
        summary = load_dataset(builtin_name).summary()  # default splits: holdout 10%, seed 0
        Dataset.objects.get_or_create(owner=None, builtin_name=builtin_name, defaults={
            "name": label, "kind": "builtin", "summary": summary, "status": Dataset.Status.READY})
        self.stdout.write(f"Created built-in dataset {label!r}")

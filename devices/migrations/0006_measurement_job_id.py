"""``MeasurementRequest.job`` (a foreign key into the adaptation app) becomes ``job_id``, a plain
indexed number: devices no longer refers to adaptation. Existing requests keep their job's id."""
from django.db import migrations, models
from django.db.models import F


def copy_job(apps, schema_editor):
    MeasurementRequest = apps.get_model("devices", "MeasurementRequest")
    MeasurementRequest.objects.filter(job__isnull=False).update(job_ref=F("job"))


def copy_job_back(apps, schema_editor):
    MeasurementRequest = apps.get_model("devices", "MeasurementRequest")
    MeasurementRequest.objects.filter(job_ref__isnull=False).update(job=F("job_ref"))


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0005_phone_kind_lut_backend'),
    ]

    operations = [
        migrations.RemoveIndex(model_name='measurementrequest', name='measurement_job_key'),
        migrations.AddField(
            model_name='measurementrequest',
            name='job_ref',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(copy_job, copy_job_back),
        migrations.RemoveField(model_name='measurementrequest', name='job'),
        migrations.RenameField(model_name='measurementrequest', old_name='job_ref', new_name='job_id'),
        migrations.AlterField(
            model_name='measurementrequest',
            name='job_id',
            field=models.BigIntegerField(blank=True, db_index=True, null=True),
        ),
        migrations.AddIndex(
            model_name='measurementrequest',
            index=models.Index(fields=['job_id', 'key'], name='measurement_job_key'),
        ),
    ]

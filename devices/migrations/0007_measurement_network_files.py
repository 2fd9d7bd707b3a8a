"""``MeasurementRequest.network_files``: the files the asker wrote for each whole network, which
devices times (it no longer builds networks). Requests stored before it get none: one of them
still open when it runs fails with a message that says so, and a job waiting on it asks again."""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0006_measurement_job_id'),
    ]

    operations = [
        migrations.AddField(
            model_name='measurementrequest',
            name='network_files',
            field=models.JSONField(blank=True, default=list),
        ),
    ]

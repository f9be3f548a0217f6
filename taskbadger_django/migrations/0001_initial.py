from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="CarriedTask",
            fields=[
                ("result_id", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("state", models.CharField(max_length=8)),
                ("meta", models.TextField(null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                ("finished_at", models.DateTimeField(null=True)),
            ],
            options={"verbose_name": "carried Task Badger task id"},
        ),
    ]

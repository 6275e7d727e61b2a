"""The role groups of team review, so that they exist on every installation.

``reviewers`` may approve, reject or flag runs; ``viewers`` may look and
comment. Members are managed in the admin (Users -> groups). Reversing keeps
the groups: they may have members and other uses by then.
"""

from django.db import migrations

ROLE_GROUPS = ("reviewers", "viewers")  # as calibweb.core.models.ROLE_GROUPS (a migration must not import models)


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLE_GROUPS:
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("core", "0002_review_and_history_indexes"),
    ]

    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]

from __future__ import annotations

from django import forms

from .models import CalibrationConfig, ReferenceCatalog
from .selectors import configs_available, refcats_available


class RunForm(forms.Form):
    """Start runs: a configuration (default preselected) and a reference catalogue."""

    config = forms.ModelChoiceField(queryset=CalibrationConfig.objects.none(), empty_label=None)
    refcat = forms.ModelChoiceField(
        queryset=ReferenceCatalog.objects.none(), required=False, empty_label="(none: no zero point)",
        label="Reference catalogue",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["config"].queryset = configs_available()
        default = self.fields["config"].queryset.filter(is_default=True).first()
        if default is not None:
            self.fields["config"].initial = default.pk
        self.fields["refcat"].queryset = refcats_available()
        first = self.fields["refcat"].queryset.first()
        if first is not None:
            self.fields["refcat"].initial = first.pk


class RerunForm(forms.Form):
    config = forms.ModelChoiceField(queryset=CalibrationConfig.objects.none(), empty_label=None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["config"].queryset = configs_available()

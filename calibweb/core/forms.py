from __future__ import annotations

from django import forms

from .models import REVIEW_VERDICT_CHOICES, CalibrationConfig, ReferenceCatalog, ReviewState, RunStatus
from .selectors import FilterChoices, RunFilters, configs_available, refcats_available
from .services import MAX_COMMENT_CHARS


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


class RunFilterForm(forms.Form):
    """Filters of the runs list and the trends (a GET form); :meth:`filters` gives the selector's input.

    Choices come from the user's visible data (:func:`selectors.filter_choices`). An invalid
    value is reported next to its field and that filter is left out.
    """

    instrument = forms.ChoiceField(required=False)
    filter_name = forms.ChoiceField(required=False, label="Filter")
    date_from = forms.DateField(required=False, label="Observed from", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="to", widget=forms.DateInput(attrs={"type": "date"}))
    status = forms.ChoiceField(required=False, choices=[("", "all"), *RunStatus.choices])
    review_state = forms.ChoiceField(required=False, label="Review", choices=[("", "all"), *ReviewState.choices])
    config = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Configuration")
    user = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Started by")
    exposure = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, data=None, *, choices: FilterChoices):
        super().__init__(data)
        self.fields["instrument"].choices = [("", "all"), *((i, i) for i in choices.instruments)]
        self.fields["filter_name"].choices = [("", "all"), *((f, f) for f in choices.filter_names)]
        self.fields["config"].choices = [("", "all"), *((c.pk, str(c)) for c in choices.configs)]
        self.fields["user"].choices = [("", "anyone"), *((u.pk, u.get_username()) for u in choices.users)]

    def filters(self) -> RunFilters:
        """The valid filters (``is_valid`` is called; fields in error are left out)."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        date_from, date_to = data.get("date_from"), data.get("date_to")
        if date_from and date_to and date_to < date_from:
            self.add_error("date_to", "The end date is before the start date.")
            date_from = date_to = None
        return RunFilters(
            instrument=data.get("instrument") or "", filter_name=data.get("filter_name") or "",
            date_from=date_from, date_to=date_to, status=data.get("status") or "",
            review_state=data.get("review_state") or "", config_id=data.get("config"), user_id=data.get("user"),
            exposure_id=data.get("exposure"),
        )


class ReviewForm(forms.Form):
    state = forms.ChoiceField(choices=REVIEW_VERDICT_CHOICES, widget=forms.RadioSelect,
                              label="Verdict")
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}), max_length=MAX_COMMENT_CHARS,
                              help_text="Why (optional): what you checked, what is wrong.")


class CommentForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=MAX_COMMENT_CHARS, label="Comment")

"""The sign-up form's own field; allauth adds email and passwords around it."""

from django import forms


class SignupForm(forms.Form):
    """Base of allauth's sign-up form (ACCOUNT_SIGNUP_FORM_CLASS).

    The tenant itself is created by `AccountAdapter.save_user`, in the same
    transaction as the user, so `signup` has nothing left to do.
    """

    organization = forms.CharField(
        label="Organization name",
        max_length=200,
        help_text="Your company as your colleagues will see it. You can change it later.",
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )
    field_order = ["organization", "email", "password1", "password2"]

    def clean_organization(self) -> str:
        name = " ".join(self.cleaned_data["organization"].split())
        if not name:
            raise forms.ValidationError("Enter the name of your organization.")
        return name

    def signup(self, request, user) -> None:
        """Required by allauth; the work happens in the adapter (see above)."""

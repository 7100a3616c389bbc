from django import forms


class SignupForm(forms.Form):
    organization = forms.CharField(label="Organization name", max_length=200)

    def signup(self, request, user):
        pass

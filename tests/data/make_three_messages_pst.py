"""How tests/data/three-messages.pst was made (not run by the tests): a real
Outlook PST (Unicode format) written by Aspose.Email for Python via .NET,
evaluation version (it adds its notice to each body), with three messages in
Inbox, from olga@northwind.example to erin@contoso.com, Message-IDs
<pst-0..2@northwind.example>.

    pip install aspose-email-for-python-via-net   # in a throwaway venv
    DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=1 python tests/data/make_three_messages_pst.py
"""

# ruff: noqa
import aspose.email as ae
from aspose.email.storage.pst import PersonalStorage, FileFormatVersion, StandardIpmFolder
from aspose.email.mapi import MapiMessage

pst = PersonalStorage.create("tests/data/three-messages.pst", FileFormatVersion.UNICODE)
inbox = pst.create_predefined_folder("Inbox", StandardIpmFolder.INBOX)
for n in range(3):
    m = ae.MailMessage("olga@northwind.example", "erin@contoso.com", f"PST message {n}", f"Body of PST message {n}.")
    m.message_id = f"<pst-{n}@northwind.example>"
    inbox.add_message(MapiMessage.from_mail_message(m))
pst.__exit__(None, None, None) if hasattr(pst, "__exit__") else None
print("ok")

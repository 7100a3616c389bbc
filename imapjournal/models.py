"""Models of the imapjournal app."""

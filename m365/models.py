"""Models of the Microsoft 365 connection, each kept beside its logic."""

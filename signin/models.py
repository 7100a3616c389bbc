"""Models of the signin app."""

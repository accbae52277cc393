"""connect package."""

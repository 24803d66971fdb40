"""Model definitions and the size ladder."""

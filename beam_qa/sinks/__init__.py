"""Where answers go: an answers CSV per source file and PostgreSQL."""

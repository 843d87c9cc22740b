"""beam-qa upload service: the HTTP front door (FastAPI) that validates CSVs into the bucket."""

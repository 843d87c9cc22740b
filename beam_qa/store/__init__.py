"""The coordination database: schema and migrations, attempts with leases, answers, the sweep.

Shared by the pipeline (``PostgresStore``, ``LeaseKeeper``) and the upload service (the schema
version it needs); it imports nothing from the pipeline's transforms or clients.
"""

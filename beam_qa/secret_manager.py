"""Secret Manager access for values that must not travel in the job graph (the PostgreSQL password).

Secrets are read on the workers, in ``DoFn.setup()``, never while the graph is built: the graph
and its pipeline options are stored by Dataflow and shown in its console.
"""

from __future__ import annotations


def access_secret_version(name: str) -> str:
    """Returns the payload of a secret version as text.

    Tests replace this function (``monkeypatch.setattr(secret_manager, "access_secret_version", ...)``);
    callers look it up through the module so that the replacement is seen.

    Args:
        name: ``projects/P/secrets/S/versions/V`` (``latest`` is allowed as V).

    Raises:
        google.api_core.exceptions.GoogleAPICallError: when the secret cannot be read
            (missing, or the worker's service account lacks ``roles/secretmanager.secretAccessor``).
    """
    from google.cloud import secretmanager
    client = secretmanager.SecretManagerServiceClient()
    try:
        response = client.access_secret_version(request={"name": name})
    finally:
        client.transport.close()
    return response.payload.data.decode("utf-8")

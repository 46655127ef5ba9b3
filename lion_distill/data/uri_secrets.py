"""Credentials written into a URI, found and kept out: a run directory or an endpoint named with
its key in it would copy that key into config.json, state.json, the reports, the logs, the tracker's
parameters and a dataset card. Preflight refuses such a URI, naming the field and the part that
holds the credential, never the value; `redacted` is a URI fit to print.

    credential_parts("s3://AKIA...:secret@bucket/runs/x")       # ["user:password"]
    credential_parts("https://api.example/v1?api_key=sk-...")  # ["api_key"]
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

# Query parameters that carry a credential: pyarrow's S3 (access_key, secret_key, session_token),
# GCS (access_token), presigned URLs (X-Amz-*), and the usual API-key and token names.
SECRET_PARAMETERS = frozenset(
    {
        "access_key",
        "secret_key",
        "session_token",
        "access_token",
        "token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "sas",
    }
)


def credential_parts(uri: str | None) -> list[str]:
    """The parts of `uri` that hold a credential ("user:password", or a query parameter's name)."""
    if not uri or "://" not in uri:
        return []
    parts = urlsplit(uri)
    found = ["user:password"] if "@" in parts.netloc else []
    return found + [name for name, _ in parse_qsl(parts.query) if name.lower() in SECRET_PARAMETERS]


def uri_problem(field: str, uri: str | None) -> str | None:
    """Preflight's line for a URI with a credential in it, or None."""
    found = credential_parts(uri)
    if not found:
        return None
    return (
        f"{field}: the URI holds a credential ({', '.join(found)}), which would be written into the run's "
        "files, logs and reports: give it in the environment instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "an API key's variable), never in a config"
    )


def redacted(uri: str) -> str:
    """`uri` with any credential in it replaced by ****."""
    if not credential_parts(uri):
        return uri
    parts = urlsplit(uri)
    netloc = f"****@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    query = "&".join(
        f"{name}={'****' if name.lower() in SECRET_PARAMETERS else value}" for name, value in parse_qsl(parts.query)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

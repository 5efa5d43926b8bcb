"""Object-store failures (botocore's, through s3fs) in words: which URL, and what to check.

botocore raises its own exception classes (NoCredentialsError, EndpointConnectionError, ClientError, ...), which
are neither InputError nor OSError; s3fs passes some of them through, so without this they reach the user as a
traceback. This module only words them; it imports no botocore.
"""

from __future__ import annotations

import os
import re

HINT = (
    "check the endpoint (AWS_ENDPOINT_URL, or storage_options.endpoint_url) is up and reachable, and that "
    "credentials come from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) or an IAM role"
)


def storage_error_message(err: BaseException, argv: list[str]) -> str | None:
    """The message for a botocore error somewhere in `err`'s chain (None when there is none), naming the URLs
    given on the command line."""
    cause = _botocore_cause(err)
    if cause is None:
        return None
    urls = sorted({m for arg in argv for m in re.findall(r"\b(?:s3|s3a|gs|gcs|az|abfs)://\S+", arg)})
    where = ", ".join(urls) if urls else "the object store of the run config"
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    at = f" (endpoint {endpoint})" if endpoint else ""
    return f"cannot use {where}{at}: {type(cause).__name__}: {cause}; {HINT}"


def _botocore_cause(err: BaseException) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__module__.split(".")[0] in ("botocore", "aiobotocore"):
            return current
        current = current.__cause__ or current.__context__
    return None

"""What a failed AWS call tells the user: one line naming the API action, the resource and
what to do about it (``aws_call``).

botocore's own exceptions are translated by kind (credentials, permissions, throttling
that outlasted the retries, network, invalid request); anything else raised while making
a call or reading its answer (a response botocore could not parse, an answer without the
field we need) becomes the same kind of one-line error, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from nodeagent.errors import NodeagentError

log = logging.getLogger(__name__)

TRANSIENT_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "ServiceUnavailable",
    "Unavailable", "InternalError", "InternalFailure", "InternalServerError",
})
PERMISSION_CODES = frozenset({
    "UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "AuthFailure",
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken",
    "ExpiredTokenException", "SignatureDoesNotMatch",
})
POLICY_HINT = "see daemonset/examples/iam-policy-snapshot.json for the permissions needed"
NO_CREDENTIALS = (
    "no AWS credentials found (looked in the environment, ~/.aws, web identity/IRSA, "
    "EKS Pod Identity and the instance profile); give the node or the pod an IAM role"
)
NETWORK_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError,
                  ReadTimeoutError)


class AwsError(NodeagentError):
    """An AWS call failed; the message names the action and the resource."""


class SnapshotFailed(AwsError):
    """EC2 reported the snapshot in state "error"."""


def one_line(text: object) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def client_error(exc: ClientError, action: str, subject: str) -> AwsError:
    err = exc.response.get("Error", {})
    code, message = err.get("Code", "Unknown"), one_line(err.get("Message", ""))
    where = f"{action} {subject}".strip()
    if code in PERMISSION_CODES:
        return AwsError(f"{where}: not permitted ({code}: {message}); {POLICY_HINT}")
    if code in TRANSIENT_CODES:
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        return AwsError(
            f"{where}: AWS still answered {code} after {attempts} attempts; "
            "try again later or raise the account's API rate limits"
        )
    return AwsError(f"{where}: {code}: {message}")


@contextlib.contextmanager
def aws_call(action: str, subject: str = "") -> Iterator[None]:
    """Whatever is raised inside (but a NodeagentError, which already names its subject)
    becomes an AwsError naming ``action`` and ``subject``. Put the reading of the answer
    inside too: a missing field is then "an unexpected answer", not a KeyError."""
    where = f"{action} {subject}".strip()
    try:
        yield
    except NodeagentError:
        raise
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise AwsError(f"{where}: {NO_CREDENTIALS}") from exc
    except ClientError as exc:
        raise client_error(exc, action, subject) from exc
    except NETWORK_ERRORS as exc:
        raise AwsError(
            f"{where}: cannot reach AWS ({one_line(exc)}); check the node's network, VPC "
            "endpoints or --endpoint-url"
        ) from exc
    except ParamValidationError as exc:
        raise AwsError(f"{where}: invalid request: {one_line(exc)}") from exc
    except BotoCoreError as exc:
        raise AwsError(f"{where}: {one_line(exc)}") from exc
    except Exception as exc:  # e.g. ResponseParserError, a KeyError on an odd answer
        log.debug("unexpected failure of an AWS call", exc_info=True)
        detail = one_line(exc)[:300] or "no detail"  # may quote a whole HTML page
        raise AwsError(f"{where}: unexpected failure or answer ({type(exc).__name__}: "
                       f"{detail})") from exc


def error_code(exc: BaseException) -> str | None:
    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        return error_code(exc) in TRANSIENT_CODES
    return isinstance(exc, NETWORK_ERRORS)

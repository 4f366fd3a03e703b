"""botocore errors mapped into the tpi error tree, once, at the SDK boundary (s3fs's table)."""

from __future__ import annotations

import contextlib
import functools

from tpi_core import errors

ERROR_CODES: dict[str, type[errors.TpiError]] = {
    # codes only: an answer's HTTP status does the rest (tpi_core.errors.STATUS_ERRORS, any
    # 5xx), "403", "500" and "503" of bodiless answers among them
    # not found: delete steps treat these as done
    "NoSuchBucket": errors.ResourceNotFound,
    "NoSuchKey": errors.ObjectNotFound,
    "404": errors.ObjectNotFound,
    "NotFound": errors.ResourceNotFound,
    "NoSuchEntity": errors.ResourceNotFound,
    "InvalidGroup.NotFound": errors.ResourceNotFound,
    "InvalidLaunchTemplateName.NotFoundException": errors.ResourceNotFound,
    "InvalidLaunchTemplateId.NotFound": errors.ResourceNotFound,
    # permissions
    "AccessDenied": errors.PermissionDenied,
    "AccessDeniedException": errors.PermissionDenied,
    "UnauthorizedOperation": errors.PermissionDenied,
    "AuthFailure": errors.PermissionDenied,
    "InvalidAccessKeyId": errors.PermissionDenied,
    "SignatureDoesNotMatch": errors.PermissionDenied,
    # quotas and capacity
    "TooManyBuckets": errors.QuotaExceeded,
    "LimitExceeded": errors.QuotaExceeded,
    "LimitExceededException": errors.QuotaExceeded,
    "InstanceLimitExceeded": errors.QuotaExceeded,
    "VcpuLimitExceeded": errors.QuotaExceeded,
    "MaxSpotInstanceCountExceeded": errors.QuotaExceeded,
    "InsufficientInstanceCapacity": errors.QuotaExceeded,
    # damaged in transit: the sync engine fetches or sends it again
    "BadDigest": errors.IntegrityError,
    "XAmzContentSHA256Mismatch": errors.IntegrityError,
    # try again
    "PreconditionFailed": errors.TransientError,  # replaced between ranged reads
    "SlowDown": errors.TransientError,
    "Throttling": errors.TransientError,
    "ThrottlingException": errors.TransientError,
    "RequestLimitExceeded": errors.TransientError,
    "RequestTimeout": errors.TransientError,
    "InternalError": errors.TransientError,
    "ServiceUnavailable": errors.TransientError,
    "ResourceInUse": errors.TransientError,
    "ScalingActivityInProgress": errors.TransientError,
    "DependencyViolation": errors.TransientError,
    # added with the AWS backend (compute side)
    "ParameterNotFound": errors.ResourceNotFound,
    "InvalidInstanceID.NotFound": errors.ResourceNotFound,
    "InvalidAMIID.NotFound": errors.ResourceNotFound,
    "InvalidGroupId.NotFound": errors.ResourceNotFound,
    "InvalidVpcID.NotFound": errors.ResourceNotFound,
    "NoSuchTagSet": errors.ResourceNotFound,
    "OptInRequired": errors.PermissionDenied,
    "UnrecognizedClientException": errors.PermissionDenied,
    "InvalidClientTokenId": errors.PermissionDenied,
    "ExpiredToken": errors.PermissionDenied,
    "ExpiredTokenException": errors.PermissionDenied,
    "ParameterLimitExceeded": errors.QuotaExceeded,
    "TooManyUpdates": errors.TransientError,
    "ConcurrentModification": errors.TransientError,
    "IncorrectInstanceState": errors.TransientError,
}


def translate(exc: BaseException, what: str = "") -> errors.TpiError:
    """The tpi error for a botocore/aiohttp exception; the message names the code."""
    from botocore.exceptions import (ClientError, ConnectionError, NoCredentialsError,
                                     ReadTimeoutError)

    prefix = f"{what}: " if what else ""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return from_answer(str(err.get("Code", "")), err.get("Message") or "", status, what)
    if isinstance(exc, NoCredentialsError):
        return errors.PermissionDenied(f"{prefix}no AWS credentials found "
                                       "(set AWS_PROFILE or AWS_ACCESS_KEY_ID)")
    return errors.unmapped(exc, what, (ConnectionError, ReadTimeoutError))


def from_answer(code: str, message: str, status: int | None, what: str = "") -> errors.TpiError:
    """The tpi error for a service's error answer (its code, message and HTTP status), by
    the same table as :func:`translate`, without importing botocore (a missing manifest is
    a 404 in most first syncs, and the import would be a real share of one)."""
    prefix = f"{what}: " if what else ""
    cls = errors.error_for(code, status, ERROR_CODES)
    message = message or code
    return cls(f"{prefix}{code}: {message}" if code else f"{prefix}{message}")


def aws_errors(what: str = "") -> contextlib.AbstractContextManager[None]:
    """Map every SDK exception raised inside into the tpi tree (``raise ... from exc``)."""
    return errors.map_errors({Exception: functools.partial(translate, what=what)})

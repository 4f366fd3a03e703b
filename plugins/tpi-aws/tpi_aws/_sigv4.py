"""AWS Signature Version 4 for S3 requests with an unsigned payload: the hot path's signer.

botocore's signer builds an AWSRequest, parses its URL and walks its headers on every call,
a large share of the client's CPU for a small PUT. This one signs pieces that are already
encoded and keeps the day's signing key, for a fraction of that (benchmarks/README.md). Its output
is compared with botocore's in the tests, and s3rver checks every signature in the
benchmark.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_ALGORITHM = "AWS4-HMAC-SHA256"


class Signer:
    """Signs requests for one set of credentials in one region."""

    def __init__(self, access_key: str, secret_key: str, token: str | None, region: str,
                 service: str = "s3"):
        self.access_key, self.token = access_key, token
        self.region, self.service = region, service
        self._secret = ("AWS4" + secret_key).encode()
        self._key: tuple[str, bytes] = ("", b"")

    def sign(self, method: str, host: str, path: str, query: str,
             headers: Mapping[str, str], now: float | None = None) -> dict[str, str]:
        """The headers to send: ``headers`` (names lower-cased) plus date, payload hash,
        token and Authorization. ``path`` and ``query`` are sent as given (encoded, the
        query sorted), so they are their own canonical forms."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        signed = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
        signed |= {"host": host, "x-amz-date": stamp, "x-amz-content-sha256": UNSIGNED_PAYLOAD}
        if self.token:
            signed["x-amz-security-token"] = self.token
        names = sorted(signed)
        canonical = "\n".join([method, path, query,
                               "".join(f"{n}:{signed[n]}\n" for n in names),
                               ";".join(names), UNSIGNED_PAYLOAD])
        scope = f"{stamp[:8]}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join([_ALGORITHM, stamp, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        signature = hmac.new(self._day_key(stamp[:8]), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        signed["authorization"] = (f"{_ALGORITHM} Credential={self.access_key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return signed

    def _day_key(self, day: str) -> bytes:
        if self._key[0] != day:
            key = self._secret
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key = (day, key)
        return self._key[1]

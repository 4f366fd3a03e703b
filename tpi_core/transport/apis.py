"""The control-plane JSON APIs of a cloud (Compute Engine, ARM...): a pool per origin, and
one request retried as those APIs want.

A cloud's client builds the request (its URL, token and body) and maps its error answers;
what is common is here: the connections, kept per origin and closed together, and the
retries, on the network's failures and on what the cloud's ``retry`` says is worth another
try, waiting ``Retry-After`` when the answer gives one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio

from tpi_core.errors import TpiError, TransientError
from tpi_core.transport.pool import Pool
from tpi_core.transport.proxy import proxy_for


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: its status, its headers (lower-case names) and its body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


Retry = Callable[[Answer], bool]
"""Whether an answer is worth another try (a 503, a rate limit)."""


def busy(answer: Answer) -> bool:
    """The default retry: 429 and 5xx."""
    return answer.status == 429 or answer.status >= 500


class ApiPools:
    """Connections to a cloud's API origins, ``limit`` at once to each, through the proxy
    the environment names for each."""

    def __init__(self, limit: int = 8):
        self._limit = limit
        self._pools: dict[str, Pool] = {}

    def pool(self, origin: str) -> Pool:
        if origin not in self._pools:
            self._pools[origin] = Pool(origin, limit=self._limit, proxy=proxy_for(origin))
        return self._pools[origin]

    async def exchange(self, origin: str, method: str, target: str,
                       headers: Mapping[str, str], data: bytes | None, what: str, *,
                       attempts: int = 4, retry: Retry = busy) -> Answer:
        """One request, tried up to ``attempts`` times: again after a network failure (then
        a TransientError naming ``what``) or an answer ``retry`` wants tried again (then the
        last answer is returned), waiting 1, 2, 4... s or the answer's ``Retry-After``."""
        for attempt in range(attempts):
            try:
                async with self.pool(origin).request(method, target, headers,
                                                     data) as response:
                    answer = Answer(response.status,
                                    {k.lower(): v for k, v in response.headers.items()},
                                    await response.read())
            except TpiError as exc:  # the network's, at the pool: transient
                if attempt == attempts - 1:
                    raise TransientError(f"{what}: {exc}") from exc
                await anyio.sleep(2 ** attempt)
                continue
            if attempt == attempts - 1 or not retry(answer):
                return answer
            await anyio.sleep(retry_after(answer.headers, 2 ** attempt))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close every connection."""
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def retry_after(headers: Mapping[str, str], default: float) -> float:
    """Seconds an answer's ``Retry-After`` asks for (at most 60), else ``default``."""
    try:
        return min(float(headers.get("retry-after", default)), 60.0)
    except ValueError:
        return default

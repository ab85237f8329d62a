"""A small, careful client for the Juniper Mist REST API (v1), on ``requests.Session``.

What it does for its callers (see the Mist notes, README sections 1.1-1.5):

* authenticates with ``Authorization: Token ...`` and never lets the token into a message, repr or log;
* follows both pagination styles: ``X-Page-*`` headers on list endpoints (:meth:`MistClient.iter_pages`)
  and the relative ``next`` link on ``.../search`` endpoints (:meth:`MistClient.iter_search`);
* retries what can heal (5xx, timeouts, dropped connections, malformed JSON, a 429 with a short
  ``Retry-After``) with bounded exponential backoff and jitter, and turns what cannot (401, 403, 404,
  other 4xx, a 429 without ``Retry-After``: the hourly budget is spent) into clear errors.

Every HTTP attempt counts in :attr:`MistClient.calls`: the hourly budget (5,000 calls per token) is
spent by attempts, not by successes. :attr:`MistClient.requests` counts the same attempts by endpoint
template (``/api/v1/orgs/{org_id}/stats/devices``: no ids, no query, never the token) and outcome
(the HTTP status, ``timeout`` or ``error``), for ``/metrics``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from mistwatch import __version__, secrets
from mistwatch.errors import ConfigError, MistwatchError

log = logging.getLogger("mistwatch.plugins.mist.client")
log.addFilter(secrets.RedactingFilter())  # belt and braces: records logged here are redacted at the source

#: REST host root of every Mist regional cloud, by short name, plus aliases (spec ``servers`` list).
CLOUDS: dict[str, str] = {
    "global01": "https://api.mist.com",
    "global02": "https://api.gc1.mist.com",
    "global03": "https://api.ac2.mist.com",
    "global04": "https://api.gc2.mist.com",
    "global05": "https://api.gc4.mist.com",
    "emea01": "https://api.eu.mist.com",
    "emea02": "https://api.gc3.mist.com",
    "emea03": "https://api.ac6.mist.com",
    "emea04": "https://api.gc6.mist.com",
    "apac01": "https://api.ac5.mist.com",
    "apac02": "https://api.gc5.mist.com",
    "apac03": "https://api.gc7.mist.com",
}
_ALIASES = {
    "us": "global01", "gc1": "global02", "ac2": "global03", "gc2": "global04", "gc4": "global05",
    "eu": "emea01", "gc3": "emea02", "ac6": "emea03", "gc6": "emea04",
    "ac5": "apac01", "gc5": "apac02", "gc7": "apac03",
}
CLOUDS.update({alias: CLOUDS[name] for alias, name in _ALIASES.items()})

API_PREFIX = "/api/v1"
DEFAULT_USER_AGENT = f"mistwatch/{__version__} (+python-requests)"
#: Safety net against a server that keeps saying "there is more": no org needs this many pages.
MAX_PAGES = 10_000
_RATE_LIMIT_HINT = ("the hourly API budget (5,000 calls per token, reset at the top of each clock hour) "
                    "may be exhausted")


# --------------------------------------------------------------------------------------------- errors

class MistAPIError(MistwatchError):
    """Any failure talking to the Mist API. ``status`` is the HTTP status when there was one."""

    exit_code = 1

    def __init__(self, message: str, *, path: str = "", status: int | None = None) -> None:
        self.message = secrets.redact(message)
        self.path = path
        self.status = status
        super().__init__(self.message)


class MistAuthError(MistAPIError):
    """401: the token is missing, wrong, expired or deleted."""


class MistForbiddenError(MistAPIError):
    """403: the token is valid but lacks rights to this org or endpoint."""


class MistNotFoundError(MistAPIError):
    """404: wrong org id, wrong path, or the org lives in another regional cloud."""


class MistRetryError(MistAPIError):
    """Gave up after ``attempts`` attempts; ``last_error`` says what the last one saw."""

    def __init__(self, message: str, *, path: str = "", status: int | None = None,
                 attempts: int = 0, last_error: str = "") -> None:
        super().__init__(message, path=path, status=status)
        self.attempts = attempts
        self.last_error = secrets.redact(last_error)


class MistRateLimitError(MistRetryError):
    """429: without ``Retry-After`` (the hourly budget is spent: retrying before the top of the hour
    only burns calls), with one longer than ``max_retry_after``, or one that did not clear within the
    retries. ``retry_after`` is Mist's wait in seconds, None when it sent none."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


# ------------------------------------------------------------------------------------------- helpers

def resolve_base_url(cloud: str | None = None, base_url: str | None = None) -> str:
    """The API host root (no trailing slash, no ``/api/v1``) from a cloud name or an explicit URL.

    ``base_url`` wins when both are given (it is the more specific of the two).
    """
    if base_url:
        url = base_url.strip().rstrip("/")
        if url.endswith(API_PREFIX):  # people paste the documented URL with the prefix
            url = url[: -len(API_PREFIX)]
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"base_url must be an http(s) URL like https://api.eu.mist.com, got {base_url!r}",
                              key="mist.base_url")
        return url
    if cloud:
        found = CLOUDS.get(cloud.strip().lower())
        if found is None:
            raise ConfigError(f"unknown Mist cloud {cloud!r}; use one of {', '.join(sorted(CLOUDS))} "
                              "or set base_url", key="mist.cloud")
        return found
    raise ConfigError("set either cloud (e.g. eu, global01) or base_url (e.g. https://api.eu.mist.com)",
                      key="mist")


def portal_root(base_url: str) -> str | None:
    """The Mist portal (web UI) of the cloud an API host belongs to: ``https://api.eu.mist.com`` ->
    ``https://manage.eu.mist.com``; every Mist cloud names its API ``api.<cloud>`` and its portal
    ``manage.<cloud>``. None for any other host (a proxy, the simulator): set ``portal_url`` then."""
    host = (urlsplit(base_url).hostname or "").lower()
    if not host.startswith("api.") or not host.endswith(".mist.com"):
        return None
    return "https://manage." + host[len("api."):]


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # HTTP dates are GMT by definition
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: A path segment that is an id, not a name: a UUID (org, site, device ids), a MAC, or a number.
_ID_SEGMENT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                         r"|[0-9a-fA-F]{12}|[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}|[0-9]+")


def endpoint_template(path: str) -> str:
    """The endpoint a path belongs to, ids replaced by placeholders named after the collection they
    follow: ``/api/v1/orgs/<uuid>/stats/devices`` -> ``/api/v1/orgs/{org_id}/stats/devices``. A
    metrics label must not hold one series per org, site or device (nor anything secret)."""
    out: list[str] = []
    for segment in path.split("?", 1)[0].split("/"):
        if segment and _ID_SEGMENT.fullmatch(segment):
            parent = out[-1] if out else ""
            name = parent[:-1] if parent.endswith("s") and not parent.startswith("{") else ""
            segment = "{" + (f"{name}_id" if name.isidentifier() else "id") + "}"
        out.append(segment)
    return "/".join(out)


def _detail(resp: requests.Response) -> str:
    """Mist's own one-line reason (``{"detail": ...}``), if the error body has one."""
    try:
        body = json.loads(resp.content or b"null")
    except ValueError:
        return ""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"][:200]
    return ""


def _said(resp: requests.Response) -> str:
    detail = _detail(resp)
    return f" (Mist says: {detail})" if detail else ""


def _page_items(body: Any, headers: Mapping[str, str], limit: int) -> tuple[list, int | None, int]:
    """(items, total or None, effective limit) of one page of a list endpoint.

    Arrays carry the paging in ``X-Page-*`` headers; objects like ``insights/sites-sle`` also echo
    ``limit``/``total`` in the body and hold the rows in ``results``.
    """
    if isinstance(body, list):
        items = body
    elif isinstance(body, dict) and isinstance(body.get("results"), list):
        items = body["results"]
    else:
        raise ValueError(f"expected a JSON array or an object with results, got {type(body).__name__}")
    total = _int_or_none(headers.get("X-Page-Total"))
    page_limit = _int_or_none(headers.get("X-Page-Limit"))
    if isinstance(body, dict):
        total = total if total is not None else _int_or_none(body.get("total"))
        page_limit = page_limit or _int_or_none(body.get("limit"))
    return items, total, page_limit or limit


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


# -------------------------------------------------------------------------------------------- client

class MistClient:
    """GET-only Mist API client with retries, pagination and a call counter.

    ``base_url`` is the host root (``https://api.eu.mist.com``); paths are ``/api/v1/...`` or relative
    to it (``orgs/<id>/stats/sites``). ``timeout`` is requests' (connect, read) in seconds.
    ``sleep`` is injectable so tests never wait. ``prefetch`` pages of a list endpoint are fetched
    ahead on worker threads (0: strictly one request at a time).
    """

    def __init__(self, base_url: str, token: str | None, *, timeout: float | tuple[float, float] = (5, 30),
                 max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 60,
                 max_retry_after: float = 300, page_limit: int = 1000,
                 sleep: Callable[[float], None] = time.sleep, user_agent: str = DEFAULT_USER_AGENT,
                 verify: bool = True, prefetch: int = 2) -> None:
        self.base_url = resolve_base_url(None, base_url)
        self._token = secrets.register(token) if token else None
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.page_limit = page_limit
        self.verify = verify
        self.prefetch = max(0, int(prefetch))
        self._lock = threading.Lock()
        self._sleep = sleep
        self.calls = 0
        #: Attempts by (endpoint template, HTTP status or "timeout"/"error") since :meth:`reset_calls`.
        self.requests: Counter[tuple[str, str]] = Counter()
        self._session = requests.Session()
        self._session.headers.update({"Accept": "application/json", "User-Agent": user_agent})
        if self._token:
            self._session.headers["Authorization"] = f"Token {self._token}"

    def __repr__(self) -> str:
        return f"MistClient(base_url={self.base_url!r}, token='{secrets.MASK}')"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> MistClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_calls(self) -> None:
        with self._lock:
            self.calls = 0
            self.requests = Counter()

    def _count(self, endpoint: str, outcome: str) -> None:
        with self._lock:  # pages may be fetched from worker threads
            self.requests[(endpoint, outcome)] += 1

    # ---- public calls

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """One GET, retried as needed; returns the decoded JSON body."""
        body, _headers = self._request(path, params)
        return body

    def iter_pages(self, path: str, params: Mapping[str, Any] | None = None
                   ) -> Iterator[tuple[list, int, int | None]]:
        """Pages of a list endpoint as ``(items, items_so_far, total)``, following ``X-Page-*``.

        Requests the next page while ``limit * page < total`` and the last page was not empty;
        without a total, while pages come back full. Every page's status is checked. Once the total
        is known, up to ``prefetch`` further pages are requested ahead on worker threads.
        """
        query = dict(params or {})
        limit = int(query.get("limit") or self.page_limit)
        query["limit"] = limit
        page = int(query.get("page") or 1)
        done = 0
        pending: deque[tuple[int, Future]] = deque()
        pool: ThreadPoolExecutor | None = None

        def fetch_ahead(number: int) -> tuple[bytes, Mapping[str, str], tuple[int, int, bool]]:
            # Only the bytes: parsed, a page of 1,000 devices is several times larger, and it is
            # parsed when its turn comes, so one parsed page at a time is in memory, not 1 + prefetch.
            return self._request(path, {**query, "page": number}, raw=True)

        try:
            for _ in range(MAX_PAGES):
                if pending and pending[0][0] == page:
                    content, headers, state = pending.popleft()[1].result()
                    try:
                        body = json.loads(content)
                    except ValueError:  # that attempt failed after all: go on as _request would have
                        body, headers = self._request(path, {**query, "page": page}, malformed=state)
                    del content
                else:
                    body, headers = self._request(path, {**query, "page": page})
                try:
                    items, total, page_limit = _page_items(body, headers, limit)
                except ValueError as exc:
                    raise MistAPIError(f"GET {self._show(path)} page {page}: {exc}", path=path) from None
                del body
                done += len(items)
                last = None if total is None else -(-total // page_limit)
                if items and last is not None and self.prefetch > 0 and page < last:
                    # Ask for the next pages now, so they travel while the caller parses this one.
                    if pool is None:
                        pool = ThreadPoolExecutor(self.prefetch, thread_name_prefix="mistapi")
                    ahead = pending[-1][0] if pending else page
                    while ahead < min(last, page + self.prefetch):
                        ahead += 1
                        pending.append((ahead, pool.submit(fetch_ahead, ahead)))
                yield items, done, total
                if not items:
                    return
                if total is None:
                    if len(items) < page_limit:
                        return
                elif page_limit * page >= total:
                    return
                page += 1
            raise MistAPIError(f"GET {self._show(path)}: more than {MAX_PAGES} pages, stopped", path=path)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def get_pages(self, path: str, params: Mapping[str, Any] | None = None) -> list:
        """All items of a list endpoint (see :meth:`iter_pages`)."""
        out: list = []
        for items, _done, _total in self.iter_pages(path, params):
            out.extend(items)
        return out

    def iter_search(self, path: str, params: Mapping[str, Any] | None = None
                    ) -> Iterator[tuple[list, int, int | None]]:
        """Pages of a ``.../search`` endpoint as ``(results, results_so_far, total)``.

        Follows the relative ``next`` link verbatim (never building ``search_after`` itself) until
        it is absent, the page is empty, or the link repeats.
        """
        query = dict(params or {})
        query.setdefault("limit", self.page_limit)
        target: str = path
        params_now: Mapping[str, Any] | None = query
        seen: set[str] = set()
        done = 0
        for _ in range(MAX_PAGES):
            body = self.get(target, params_now)
            if not isinstance(body, dict) or not isinstance(body.get("results", []), list):
                raise MistAPIError(f"GET {self._show(path)}: expected an object with results", path=path)
            results = body.get("results") or []
            done += len(results)
            yield results, done, _int_or_none(body.get("total"))
            nxt = body.get("next")
            if not nxt or not results:
                return
            if nxt in seen:
                raise MistAPIError(f"GET {self._show(path)}: the next link repeated itself", path=path)
            seen.add(nxt)
            target, params_now = nxt, None
        raise MistAPIError(f"GET {self._show(path)}: more than {MAX_PAGES} pages, stopped", path=path)

    def search(self, path: str, params: Mapping[str, Any] | None = None) -> list:
        """All results of a search endpoint (see :meth:`iter_search`)."""
        out: list = []
        for results, _done, _total in self.iter_search(path, params):
            out.extend(results)
        return out

    # ---- internals

    def _url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            # Only ever send the token back to the host it belongs to.
            if not path.startswith(self.base_url + "/"):
                raise MistAPIError(f"refusing to follow a link to another host: {urlsplit(path).netloc}")
            return path
        if path.startswith("/api/"):
            return self.base_url + path
        return f"{self.base_url}{API_PREFIX}/{path.lstrip('/')}"

    def _show(self, path: str) -> str:
        """The path as it appears in messages: without host and query."""
        url = self._url(path) if not path.startswith("http") else path
        return urlsplit(url).path

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter, bounded by max_backoff."""
        base = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        return base * random.uniform(0.5, 1.0)

    def _request(self, path: str, params: Mapping[str, Any] | None, *, raw: bool = False,
                 malformed: tuple[int, int, bool] | None = None) -> Any:
        """(decoded JSON body, headers) of one GET, retried as needed.

        ``raw``: return (body bytes, headers, state) of the first 2xx answer, undecoded; ``state``
        is (status, attempt, rate limited so far). If the caller cannot decode it, it calls again
        with ``malformed=state``: the retries go on after that attempt exactly as they would have."""
        url = self._url(path)
        shown = self._show(path)
        endpoint = endpoint_template(shown)
        attempts = self.max_retries + 1
        last_error = ""
        last_status: int | None = None
        rate_limited = False
        first = 1
        if malformed is not None:
            last_status, done, rate_limited = malformed
            last_error = f"malformed JSON in a {last_status} response"
            first = done + 1
            if done < attempts:
                self._sleep(self._delay(done))
        for attempt in range(first, attempts + 1):
            with self._lock:  # pages may be fetched from worker threads
                self.calls += 1
            started = time.monotonic()
            wait: float | None = None
            try:
                resp = self._session.get(url, params=params, timeout=self.timeout, verify=self.verify)
            except requests.Timeout:
                self._count(endpoint, "timeout")
                last_error, last_status = f"timed out (timeout {self.timeout}s)", None
                self._log_fail(shown, params, last_error, started)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                self._count(endpoint, "error")
                last_error, last_status = f"connection failed ({type(exc).__name__})", None
                self._log_fail(shown, params, last_error, started)
            except requests.RequestException as exc:  # bad URL and the like: retrying cannot help
                self._count(endpoint, "error")
                raise MistAPIError(f"GET {shown}: {type(exc).__name__}: {exc}", path=shown) from None
            else:
                status = resp.status_code
                self._count(endpoint, str(status))
                self._log_call(shown, params, status, started)
                if 200 <= status < 300:
                    if raw:
                        return resp.content, resp.headers, (status, attempt, rate_limited)
                    try:
                        return json.loads(resp.content), resp.headers
                    except ValueError:
                        last_error, last_status = f"malformed JSON in a {status} response", status
                elif status == 429:
                    rate_limited, last_status = True, status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    if retry_after is None:
                        # Mist documents no Retry-After: its 429 means the token's hourly budget is
                        # spent, and every retry before the top of the hour is one more refused call.
                        raise MistRateLimitError(
                            f"GET {shown}: HTTP 429 Too Many Requests without Retry-After; "
                            f"{_RATE_LIMIT_HINT}{_said(resp)}", path=shown, status=429, attempts=attempt,
                            last_error="429 Too Many Requests", retry_after=None)
                    if retry_after > self.max_retry_after:
                        raise MistRateLimitError(
                            f"GET {shown}: HTTP 429 Too Many Requests, Mist asks to wait {retry_after:.0f}s "
                            f"(more than max_retry_after={self.max_retry_after:g}s); {_RATE_LIMIT_HINT}",
                            path=shown, status=429, attempts=attempt, last_error="429 Too Many Requests",
                            retry_after=retry_after)
                    last_error = "HTTP 429 Too Many Requests"
                    wait = retry_after
                elif status >= 500:
                    last_error, last_status = f"HTTP {status} {resp.reason or ''}".rstrip(), status
                else:
                    raise self._client_error(shown, resp)
            if attempt < attempts:
                self._sleep(wait if wait is not None else self._delay(attempt))
        message = f"GET {shown}: gave up after {attempts} attempts: {last_error}"
        if rate_limited:
            raise MistRateLimitError(f"{message}; {_RATE_LIMIT_HINT}", path=shown, status=last_status,
                                     attempts=attempts, last_error=last_error, retry_after=0.0)
        raise MistRetryError(message, path=shown, status=last_status, attempts=attempts,
                             last_error=last_error)

    def _client_error(self, shown: str, resp: requests.Response) -> MistAPIError:
        status = resp.status_code
        detail = _detail(resp)
        said = f" (Mist says: {detail})" if detail else ""
        if status == 401:
            if not self._token:
                return MistAuthError(f"GET {shown}: HTTP 401: no API token was sent; set mist.token "
                                     f"(or MIST_API_TOKEN){said}", path=shown, status=401)
            return MistAuthError(f"GET {shown}: HTTP 401: Mist refused the API token (wrong, expired, "
                                 f"deleted after 90 days unused, or made for another regional cloud); "
                                 f"check mist.token and mist.cloud{said}", path=shown, status=401)
        if status == 403:
            return MistForbiddenError(f"GET {shown}: HTTP 403: the token has no rights for this "
                                      f"org or endpoint; use a token with at least the read role "
                                      f"on mist.org_id{said}", path=shown, status=403)
        if status == 404:
            return MistNotFoundError(f"GET {shown}: HTTP 404: not found; check mist.org_id and that "
                                     f"the org lives in this cloud ({self.base_url}){said}",
                                     path=shown, status=404)
        return MistAPIError(f"GET {shown}: HTTP {status} {resp.reason or ''}{said}".rstrip(),
                            path=shown, status=status)

    def _log_call(self, shown: str, params: Mapping[str, Any] | None, status: int, started: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            query = f"?{urlencode(params)}" if params else ""
            log.debug("GET %s%s -> %s in %.0f ms", shown, query, status, (time.monotonic() - started) * 1000)

    def _log_fail(self, shown: str, params: Mapping[str, Any] | None, error: str, started: float) -> None:
        if log.isEnabledFor(logging.DEBUG):
            query = f"?{urlencode(params)}" if params else ""
            log.debug("GET %s%s -> %s after %.0f ms", shown, query, error, (time.monotonic() - started) * 1000)

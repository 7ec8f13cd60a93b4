"""The OpenSearch client, made from ``PERSONA_OPENSEARCH_URL``: credentials and TLS from the URL, one node or
a cluster's nodes (comma-separated), and the retry policy that suits a cluster whose nodes come and go."""

from __future__ import annotations

import urllib.parse
from typing import Any

__all__ = ["client_from_url", "redact_url", "waiting"]


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of node URLs) without its passwords (for messages and logs)."""
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def client_from_url(url: str, verify_certs: bool = True, ca_certs: str | None = None) -> Any:
    """An ``OpenSearch`` client; credentials and TLS come from the URL, an ``https`` node's certificate is
    verified (against ``ca_certs`` when given) unless ``verify_certs`` is off.

    ``url`` may list several nodes of one cluster, comma-separated (``http://a:9200,http://b:9200``):
    the client spreads its requests over them and retries a request on another node when one stops
    answering, so a node leaving the cluster costs no query. The nodes share scheme and credentials."""
    from opensearchpy import OpenSearch

    hosts: list[dict[str, Any]] = []
    first: urllib.parse.SplitResult | None = None
    for text in (part.strip() for part in url.split(",")):
        parts = urllib.parse.urlsplit(text if "://" in text else f"http://{text}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"OpenSearch URL {redact_url(url)!r}: expected http(s)://[user:password@]host[:port], "
                "or several such URLs separated by commas"
            )
        if first is not None and (parts.scheme, parts.username, parts.password) != (
            first.scheme,
            first.username,
            first.password,
        ):
            raise ValueError(f"OpenSearch URL {redact_url(url)!r}: every node must use the same scheme and credentials")
        first = first or parts
        host: dict[str, Any] = {
            "host": parts.hostname,
            "port": parts.port or (443 if parts.scheme == "https" else 9200),
        }
        if parts.path and parts.path != "/":
            host["url_prefix"] = parts.path
        hosts.append(host)
    assert first is not None
    kwargs: dict[str, Any] = {"hosts": hosts, "timeout": 60, "pool_maxsize": 8}
    if len(hosts) > 1:
        # A request that meets a node gone or going is sent again to another (refused, reset, timed out,
        # 502 or 504). Not a 503: that is the cluster's own answer (a shard with no copy left, no elected
        # manager), the same from every node, and opensearch-py would mark each healthy node it came
        # from as dead; searches retry it after a pause (``complete_search``), loads chunk by chunk.
        kwargs.update(max_retries=len(hosts), retry_on_timeout=True, retry_on_status=(502, 504))
    if first.username is not None or first.password is not None:
        kwargs["http_auth"] = (
            urllib.parse.unquote(first.username or ""),
            urllib.parse.unquote(first.password or ""),
        )
    if first.scheme == "https":
        kwargs.update(use_ssl=True, verify_certs=verify_certs, ssl_show_warn=verify_certs)
        if ca_certs:
            kwargs["ca_certs"] = ca_certs
    return OpenSearch(**kwargs)


def waiting(seconds: float) -> dict[str, Any]:
    """Arguments for an API call that waits on the node up to ``seconds``: the API's ``timeout`` and, a
    little longer, the HTTP request's (opensearch-py takes a lone ``timeout`` as the request's own)."""
    return {"timeout": f"{seconds:g}s", "request_timeout": seconds + 30}

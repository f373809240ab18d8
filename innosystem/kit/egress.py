"""The egress guard: every call to a URL that a customer supplied goes through here.

Customers hand the platform URLs (a key manager endpoint, a webhook, a job type's EXTERNAL_API
endpoint), and the platform then calls them from inside its own network. Without a guard that is
a server-side request forgery: `http://127.0.0.1:6379`, `http://10.0.0.5/admin` or the cloud
metadata service at 169.254.169.254 are one registration away. The rules, the same for every
caller:

- **https only** (`grpcs` for gRPC), unless the operator allow-lists the host: plain `http`/`grpc`
  is for endpoints the operator vouches for (the embedded reference key manager, a private
  network), listed as `host:port` or `host` in `INNOSYSTEM_EGRESS_ALLOW_HOSTS` (the keys
  service) or the runner's `--egress-allow-host` / `INNOSYSTEM_RUNNER_EGRESS_ALLOW_HOSTS`.
- **The resolved address is checked when the connection is made**, not only when the URL is
  registered: loopback, private, link-local, multicast, unspecified, reserved, shared (CGNAT) and
  cloud-metadata addresses are refused, including IPv4 hidden in IPv6 (mapped, 6to4, NAT64). For
  aiohttp the check sits in the connector's resolver, so the address checked is the address
  dialled and DNS rebinding (a name that answers a public address at registration and 127.0.0.1
  later) does not pass. For gRPC the name is resolved and checked here and the channel dials the
  checked IP literal, with the original name as authority and TLS server name.
- **No redirects**: a 3xx is an error, never followed (an https URL must not bounce to an internal one).
- **Bounded**: a total time limit per call and a cap on the response size (read incrementally;
  a bigger answer is refused, not truncated), no proxy from the environment.
- **Errors say what failed, never what the target said**: `EgressError.reason` is a code
  (`EGRESS_BLOCKED`, `EGRESS_REDIRECT`, `EGRESS_RESPONSE_TOO_LARGE`, `EGRESS_TIMEOUT`,
  `EGRESS_UNREACHABLE`) and the message a short phrase ("connection refused"); response bodies
  are handed to the caller, who decides what (if anything) of them is safe to show.

An allow-listed host skips the address check as well (the operator said it may be internal), but
not the redirect, size and time limits.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # aiohttp loads with the first HTTP call: a runner that makes none starts without it
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

ALLOW_ENV = "INNOSYSTEM_EGRESS_ALLOW_HOSTS"
BLOCKED = "EGRESS_BLOCKED"
REDIRECT = "EGRESS_REDIRECT"
TOO_LARGE = "EGRESS_RESPONSE_TOO_LARGE"
TIMEOUT = "EGRESS_TIMEOUT"
UNREACHABLE = "EGRESS_UNREACHABLE"
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
SECURE_SCHEMES = frozenset({"https", "grpcs"})
PLAIN_SCHEMES = frozenset({"http", "grpc"})
DEFAULT_PORTS = {"https": 443, "grpcs": 443, "http": 80, "grpc": 80}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Instance metadata services (AWS, GCP, Azure, OpenStack on the link-local one; AWS's IPv6 one;
# Alibaba's): named so an error says what was hit, and refused even if a range rule changed.
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressError(Exception):
    """A guarded call that did not happen or did not finish; `reason` is the code to show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message

    def __str__(self) -> str:
        return self.message


class _BlockedAddress(OSError):
    """Raised inside aiohttp's resolver: aiohttp wraps OSErrors from there in ClientConnectorError
    (as `os_error`), which is how `Client.request` gets the EgressError back out."""

    def __init__(self, error: EgressError) -> None:
        super().__init__(error.message)
        self.error = error


def address_problem(address: str | IPAddress) -> str | None:
    """Why a connection to `address` is refused ("loopback", "private", …), or None if it may go."""
    ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                                                      if ip in NAT64 else None)
        if embedded is not None:
            return address_problem(embedded)
        if ip.teredo is not None:
            return "Teredo tunnel"
    if ip in METADATA:
        return "cloud metadata"
    for name in ("loopback", "unspecified", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if not ip.is_global:  # shared address space (100.64/10), benchmarking, documentation ranges, …
        return "non-public"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _norm_host(host: str) -> str:
    return host.strip().lower().strip("[]").rstrip(".")


def parse_allow_list(text: str | Iterable[str]) -> frozenset[str]:
    """`host:port` or `host` entries (comma-separated text or a list); IPv6 as `[::1]:50060`.
    ValueError names a malformed entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        parts = urllib.parse.urlsplit("//" + item)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"egress allow-list entry {item!r}: bad port") from None
        if not parts.hostname or parts.path or parts.username:
            raise ValueError(f"egress allow-list entry {item!r}: want host or host:port")
        host = _norm_host(parts.hostname)
        out.add(f"{host}:{port}" if port else host)
    return frozenset(out)


@dataclass(frozen=True)
class Policy:
    """What the operator allows. The default (nothing allow-listed) is the strict one."""

    allow_hosts: frozenset[str] = frozenset()
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @classmethod
    def from_env(cls, name: str = ALLOW_ENV, *, extra: Iterable[str] = (), **kwargs: Any) -> Policy:
        # Through kit.config.env, like every setting (the deploy checks see what the code reads).
        from innosystem.kit.config import env

        return cls(allow_hosts=parse_allow_list(env(name, "") or "") | parse_allow_list(extra), **kwargs)

    @classmethod
    def trusting(cls, url: str) -> Policy:
        """A policy that allow-lists exactly the host:port of `url`: for an operator's own tool
        calling an endpoint the operator named (a health probe, the conformance test), never for
        a URL a customer supplied."""
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 443)
        return cls(allow_hosts=frozenset({f"{_norm_host(parts.hostname or '')}:{port}"}))

    def allows(self, host: str, port: int) -> bool:
        h = _norm_host(host)
        return f"{h}:{port}" in self.allow_hosts or h in self.allow_hosts


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    allow_listed: bool

    @property
    def tls(self) -> bool:
        return self.scheme in SECURE_SCHEMES


def check_url(url: str, policy: Policy, schemes: Iterable[str] = ("https", "http")) -> Target:
    """What can be decided from the URL alone (at registration and before every call): the
    scheme, no credentials, and a literal address's range. EgressError(BLOCKED) says which rule;
    ValueError says the URL is malformed."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    allowed_schemes = set(schemes)
    if scheme not in allowed_schemes or not parts.hostname:
        raise ValueError(f"must be {' or '.join(s + '://' for s in sorted(allowed_schemes & SECURE_SCHEMES))}"
                         "host[:port][/path]")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    host = _norm_host(parts.hostname)
    allow_listed = policy.allows(host, port)
    if scheme in PLAIN_SCHEMES and not allow_listed:
        secure = {"http": "https", "grpc": "grpcs"}[scheme]
        raise EgressError(BLOCKED, f"{scheme}:// is allowed only to hosts the operator allow-lists; use {secure}://")
    literal = _literal(host)
    if literal is not None and not allow_listed:
        problem = address_problem(literal)
        if problem:
            raise EgressError(BLOCKED, f"{host} is a {problem} address")
    return Target(scheme, host, port, parts.path, allow_listed)


async def resolve(host: str, port: int, policy: Policy) -> list[str]:
    """The host's addresses, every one of them checked (one bad answer refuses the name: a name
    that resolves to an internal address is not a customer's public endpoint)."""
    literal = _literal(host)
    if literal is not None:
        found = [str(literal)]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise EgressError(UNREACHABLE, f"cannot resolve {host}") from None
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not found:
            raise EgressError(UNREACHABLE, f"cannot resolve {host}")
    if not policy.allows(host, port):
        for address in found:
            problem = address_problem(address)
            if problem:
                raise EgressError(BLOCKED, f"{host} resolves to a {problem} address")
    return found


class GuardedResolver:
    """aiohttp's resolver, with every answer checked before the connector dials it (aiohttp's
    `AbstractResolver` interface, which its connector calls; not its subclass, so that this module
    loads without aiohttp)."""

    def __init__(self, policy: Policy) -> None:
        from aiohttp.resolver import DefaultResolver

        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self.policy.allows(host, port):
            for r in results:
                problem = address_problem(r["host"])
                if problem:
                    raise _BlockedAddress(EgressError(BLOCKED, f"{host} resolves to a {problem} address"))
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def describe(exc: BaseException) -> str:
    """A short phrase for a transport failure (our side's view of it, never the peer's words)."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate not accepted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "cannot resolve the host"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        if code == errno.ECONNREFUSED:
            return "connection refused"
        if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable"
        return "cannot connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed before an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "malformed answer"
    return "connection failed"


class Client:
    """Guarded HTTP calls: one pooled aiohttp session whose connector checks what it resolves.

    Every guarded HTTP call goes through `request`, so the static checks, the resolver and the
    limits cannot be forgotten by one caller."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None or self._session.closed:
            # trust_env=False: no HTTP(S)_PROXY from the environment (a proxy would resolve the name
            # itself, past the resolver's check).
            resolver = cast("AbstractResolver", GuardedResolver(self.policy))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver), trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, url: str, *, time_limit: float, data: bytes | None = None,
                      json: Any = None, headers: Mapping[str, str] | None = None,
                      max_response_bytes: int | None = None) -> Response:
        """One call, any status (the caller interprets it) except a redirect; EgressError otherwise."""
        import aiohttp

        try:
            check_url(url, self.policy)
        except ValueError as exc:
            raise EgressError(BLOCKED, f"not a valid URL: {exc}") from None
        cap = max_response_bytes or self.policy.max_response_bytes
        try:
            async with asyncio.timeout(time_limit):
                async with self._http().request(method, url, data=data, json=json, headers=headers,
                                                allow_redirects=False,
                                                timeout=aiohttp.ClientTimeout(total=time_limit)) as resp:
                    if 300 <= resp.status < 400:
                        raise EgressError(REDIRECT, f"answered a redirect (HTTP {resp.status}), which is not followed")
                    if resp.content_length is not None and resp.content_length > cap:
                        raise EgressError(TOO_LARGE, f"the answer is larger than {cap} bytes")
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > cap:
                            raise EgressError(TOO_LARGE, f"the answer is larger than {cap} bytes")
                    return Response(resp.status, bytes(body), dict(resp.headers))
        except EgressError:
            raise
        except TimeoutError:
            raise EgressError(TIMEOUT, f"no answer within {time_limit:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _BlockedAddress):
                raise exc.os_error.error from None
            raise EgressError(UNREACHABLE, describe(exc)) from None
        except aiohttp.InvalidURL:
            raise EgressError(BLOCKED, "not a valid URL") from None
        except aiohttp.ClientError as exc:
            raise EgressError(UNREACHABLE, describe(exc)) from None


async def grpc_target(target: Target, policy: Policy) -> tuple[str, list[tuple[str, Any]]]:
    """Where a gRPC channel to `target` should dial, and its options.

    gRPC resolves names itself, out of our reach, so a name is resolved and checked here and the
    channel dials the checked literal; the original name stays the :authority and the TLS server
    name, so certificates are verified against it. An allow-listed host is dialled by name."""
    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0),
                                      ("grpc.max_receive_message_length", policy.max_response_bytes)]
    if target.allow_listed:
        return f"{target.host}:{target.port}", options
    address = (await resolve(target.host, target.port, policy))[0]
    dial = f"ipv6:[{address}]:{target.port}" if ":" in address else f"ipv4:{address}:{target.port}"
    if _literal(target.host) is None:
        options += [("grpc.default_authority", f"{target.host}:{target.port}"),
                    ("grpc.ssl_target_name_override", target.host)]
    return dial, options

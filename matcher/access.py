"""Who may call what: roles from client certificates, set in one access file.

The access file (JSON, or TOML when it ends in ``.toml``) maps a client certificate to a
role and, optionally, a search rate limit::

    # access.toml
    anonymous_role = "none"     # clients without a certificate (plain TLS, or --insecure)
    unlisted_role = "none"      # certificates the CA signed that no rule below names
    rate_limit = { per_second = 1.0, burst = 5 }   # searches per client, unless overridden

    [[clients]]
    cn = "device-1"             # certificate subject common name ...
    role = "device"
    [[clients]]
    dns = "desk-3.custody.example"   # ... or a DNS name in its subjectAltName ...
    role = "custody"
    rate_limit = { per_second = 5, burst = 20 }
    [[clients]]
    sha256 = "9F:86:D0:..."     # ... or the SHA-256 fingerprint of the certificate (DER)
    role = "admin"
    rate_limit = "none"         # no limit for this client

The first rule that names the certificate decides. Roles (a role allows what the ones
before it allow): ``none`` nothing; ``device`` Identify; ``custody`` also Verify,
Enroll and GetSubject; ``admin`` everything (also Remove, EnrollStream, Stats; the audit
purge is a local command for whoever holds the data folder). Health checking and server
reflection are always open. Without an access file the matcher allows everything to
everyone, as before; ``ink-matcher serve`` warns about it loudly.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import tomllib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from matcher.ratelimit import RateLimit

MATCHER_SERVICE = "ink.v1.Matcher"


class Role(IntEnum):
    """Roles in increasing order of trust."""

    NONE = 0
    DEVICE = 1
    CUSTODY = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# The least role each RPC needs; an RPC not listed needs admin.
REQUIRED_ROLE = {
    "Identify": Role.DEVICE,
    "Verify": Role.CUSTODY,
    "Enroll": Role.CUSTODY,
    "GetSubject": Role.CUSTODY,
    "Remove": Role.ADMIN,
    "EnrollStream": Role.ADMIN,
    "Stats": Role.ADMIN,
}
# RPCs that cost a search and so draw on the caller's rate limit.
RATE_LIMITED = frozenset({"Identify", "Verify"})


class AccessConfigError(ValueError):
    """The access file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ClientIdentity:
    """What the transport proved about a caller."""

    peer: str  # the gRPC peer, e.g. "ipv4:127.0.0.1:53422"
    common_name: str = ""
    dns_names: tuple[str, ...] = ()
    sha256: str = ""  # upper-case hex of the certificate's DER, no colons; "" without one

    @property
    def has_certificate(self) -> bool:
        return bool(self.sha256)

    @property
    def key(self) -> str:
        """A stable key for rate limiting: the certificate, else the peer's host."""
        if self.sha256:
            return f"cert:{self.sha256}"
        host = self.peer.rsplit(":", 1)[0] if self.peer.count(":") >= 2 else self.peer
        return f"peer:{host}"

    @property
    def label(self) -> str:
        """How audit records and messages name the caller (never a secret)."""
        if self.common_name:
            return f"CN={self.common_name}"
        if self.dns_names:
            return f"DNS={self.dns_names[0]}"
        if self.sha256:
            return f"SHA256={self.sha256[:16]}"
        return "no certificate"


@dataclass(frozen=True)
class ClientRule:
    """One ``[[clients]]`` entry: a selector, a role and an optional rate limit."""

    selector: str  # "cn", "dns" or "sha256"
    value: str
    role: Role
    rate_limit: RateLimit | None
    inherits_rate_limit: bool = True

    def matches(self, client: ClientIdentity) -> bool:
        if self.selector == "cn":
            return client.common_name == self.value
        if self.selector == "dns":
            return self.value in client.dns_names
        return client.sha256 == self.value


@dataclass(frozen=True)
class Grant:
    """What one caller may do."""

    role: Role
    rate_limit: RateLimit | None
    rule: str  # which rule decided, for messages


@dataclass(frozen=True)
class AccessPolicy:
    """The parsed access file."""

    anonymous_role: Role = Role.NONE
    unlisted_role: Role = Role.NONE
    rate_limit: RateLimit | None = None
    clients: tuple[ClientRule, ...] = field(default_factory=tuple)
    source: str = "built-in"

    def grant(self, client: ClientIdentity) -> Grant:
        if not client.has_certificate:
            return Grant(self.anonymous_role, self.rate_limit, "anonymous_role")
        for rule in self.clients:
            if rule.matches(client):
                limit = self.rate_limit if rule.inherits_rate_limit else rule.rate_limit
                return Grant(rule.role, limit, f"{rule.selector} = {rule.value!r}")
        return Grant(self.unlisted_role, self.rate_limit, "unlisted_role")

    def denial(self, client: ClientIdentity, method: str, grant: Grant) -> str | None:
        """None when ``client`` may call ``method``, else a message saying what to do."""
        needed = REQUIRED_ROLE.get(method, Role.ADMIN)
        if grant.role >= needed:
            return None
        if not client.has_certificate:
            return (
                f"{method} needs the {needed.label} role, and a client without a certificate "
                f"gets the {grant.role.label} role on this matcher: connect with this "
                "device's client certificate (mutual TLS)"
            )
        return (
            f"{method} needs the {needed.label} role; this client ({client.label}) has the "
            f"{grant.role.label} role (access rule {grant.rule}). Ask the matcher's "
            f"administrator to grant it in the access file ({self.source})"
        )


def load_policy(path: str | Path) -> AccessPolicy:
    """Read and check an access file (TOML when it ends in .toml, else JSON)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise AccessConfigError(f"cannot read the access file {path}: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text.decode()) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AccessConfigError(f"access file {path} is not valid "
                                f"{'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    return policy_from_dict(raw, source=str(path))


def policy_from_dict(raw: object, source: str = "access file") -> AccessPolicy:
    """An :class:`AccessPolicy` from the parsed file, with a clear error for each mistake."""
    if not isinstance(raw, dict):
        raise AccessConfigError(f"{source}: the top level must be a table/object")
    unknown = set(raw) - {"anonymous_role", "unlisted_role", "rate_limit", "clients"}
    if unknown:
        raise AccessConfigError(f"{source}: unknown keys {sorted(unknown)}")
    default_limit = _rate_limit(raw.get("rate_limit", "none"), f"{source}: rate_limit")
    rules = []
    entries = raw.get("clients", [])
    if not isinstance(entries, list):
        raise AccessConfigError(f"{source}: clients must be a list of tables/objects")
    for i, entry in enumerate(entries):
        where = f"{source}: clients[{i}]"
        if not isinstance(entry, dict):
            raise AccessConfigError(f"{where} must be a table/object")
        unknown = set(entry) - {"cn", "dns", "sha256", "role", "rate_limit"}
        if unknown:
            raise AccessConfigError(f"{where}: unknown keys {sorted(unknown)}")
        selectors = [k for k in ("cn", "dns", "sha256") if k in entry]
        if len(selectors) != 1:
            raise AccessConfigError(f"{where} must name the certificate by exactly one of "
                                    "cn, dns or sha256")
        selector = selectors[0]
        value = entry[selector]
        if not isinstance(value, str) or not value.strip():
            raise AccessConfigError(f"{where}: {selector} must be a non-empty string")
        if selector == "sha256":
            value = _fingerprint(value, where)
        if "role" not in entry:
            raise AccessConfigError(f"{where} needs a role")
        inherits = "rate_limit" not in entry
        limit = None if inherits else _rate_limit(entry["rate_limit"], f"{where}: rate_limit")
        rules.append(ClientRule(selector, value, _role(entry["role"], f"{where}: role"),
                                limit, inherits))
    return AccessPolicy(
        anonymous_role=_role(raw.get("anonymous_role", "none"), f"{source}: anonymous_role"),
        unlisted_role=_role(raw.get("unlisted_role", "none"), f"{source}: unlisted_role"),
        rate_limit=default_limit,
        clients=tuple(rules),
        source=source,
    )


def client_identity(auth_context: dict, peer: str) -> ClientIdentity:
    """The caller as gRPC's auth context describes it (empty without a certificate)."""
    def first(key: str) -> str:
        values = auth_context.get(key) or []
        return values[0].decode(errors="replace") if values else ""

    pem = first("x509_pem_cert")
    sha = ""
    if pem:
        sha = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    sans = tuple(v.decode(errors="replace")
                 for v in auth_context.get("x509_subject_alternative_name") or [])
    return ClientIdentity(peer=peer, common_name=first("x509_common_name"), dns_names=sans,
                          sha256=sha)


def certificate_fingerprint(pem: bytes | str) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as the access file takes it."""
    text = pem.decode() if isinstance(pem, bytes) else pem
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _role(value: object, where: str) -> Role:
    try:
        return Role[str(value).upper()]
    except KeyError:
        raise AccessConfigError(
            f"{where}: unknown role {value!r}; use none, device, custody or admin"
        ) from None


def _rate_limit(value: object, where: str) -> RateLimit | None:
    if value == "none":
        return None
    if not isinstance(value, dict) or set(value) - {"per_second", "burst"} \
            or "per_second" not in value:
        raise AccessConfigError(f"{where} must be \"none\" or {{per_second = N, burst = M}}")
    try:
        per_second = float(value["per_second"])
        return RateLimit(per_second, float(value.get("burst", max(1.0, per_second))))
    except (TypeError, ValueError) as exc:
        raise AccessConfigError(f"{where}: {exc}") from None


def _fingerprint(value: str, where: str) -> str:
    digest = value.replace(":", "").strip().upper()
    if len(digest) != 64 or any(c not in "0123456789ABCDEF" for c in digest):
        raise AccessConfigError(f"{where}: sha256 must be 64 hex digits (colons allowed)")
    return digest

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
Enroll and GetSubject; ``admin`` everything (also Remove, EnrollStream,
EnrollBatchStream, Stats; the audit purge is a local command for whoever holds the data
folder). Health checking and server reflection are always open. Without an access file
the matcher allows everything to everyone, as before; ``ink-matcher serve`` warns about
it loudly.

Device identity: the audit trail names the device of every search, and a device must not
be able to search under another device's name. So a client with a certificate *is* a
device: the rule's ``device_id`` when it sets one, else the certificate's common name
(else its first DNS name). A request from a ``device``-role client may leave
``context.device_id`` empty (the matcher fills in the certified id) or repeat the
certified id; any other id is refused with PERMISSION_DENIED, and the attempt is audited
with both ids. ``custody`` and ``admin`` clients may name the device they act for (a
custody desk that enrols for several scanners): their records keep the claimed device
*and* the certificate (``client``), with ``device_source = "request"``. Set
``name_devices = false`` on a rule to bind such a client to its certificate too, or
``name_devices = true`` to let a device-role client (say, a gateway that serves several
scanners) name them. Clients without a certificate (``anonymous_role``) cannot be bound:
their device id is whatever they claim, so give devices certificates::

    [[clients]]
    cn = "r307-17.devices.example"
    role = "device"
    device_id = "r307-17"        # the audit's name for it; default: the cn
    [[clients]]
    cn = "desk-3"
    role = "custody"
    name_devices = false         # this desk searches only as itself
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
    "EnrollBatchStream": Role.ADMIN,
    "Stats": Role.ADMIN,
}
# RPCs that cost a search and so draw on the caller's rate limit.
RATE_LIMITED = frozenset({"Identify", "Verify"})


class AccessConfigError(ValueError):
    """The access file cannot be used; the message names the file and the entry."""


class DeviceMismatch(Exception):
    """A client bound to one device sent a request in the name of another."""


@dataclass(frozen=True)
class DeviceBinding:
    """Which device id a caller's requests are audited under.

    ``certified`` is the device the caller's certificate stands for ("" when the
    transport proved none); ``may_name`` says whether its requests may name another.
    """

    certified: str = ""
    may_name: bool = True

    def resolve(self, claimed: str) -> tuple[str, str]:
        """(device id for the audit, "certificate" or "request"), or DeviceMismatch."""
        if not self.certified:
            return claimed, "request"
        if not claimed or claimed == self.certified:
            return self.certified, "certificate"
        if self.may_name:
            return claimed, "request"
        shown = claimed if len(claimed) <= 64 else claimed[:61] + "..."
        raise DeviceMismatch(
            f"this client's certificate is device {self.certified!r}, but the request "
            f"names device {shown!r}: a device may search only under its own identity. "
            f"Leave the device id empty or set it to {self.certified!r} (the gateway's "
            "--device-id), or ask the administrator for name_devices in the access file"
        )


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
    def device_name(self) -> str:
        """The device a certificate stands for unless its rule says: its CN, else a DNS name."""
        if self.common_name:
            return self.common_name
        if self.dns_names:
            return self.dns_names[0]
        return f"sha256:{self.sha256[:16]}" if self.sha256 else ""

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
    device_id: str = ""  # the device this certificate stands for; "" : its cn or dns name
    name_devices: bool | None = None  # None: as the role decides (custody and admin may)

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
    device: DeviceBinding = DeviceBinding()


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
                may_name = rule.role >= Role.CUSTODY if rule.name_devices is None \
                    else rule.name_devices
                binding = DeviceBinding(rule.device_id or client.device_name, may_name)
                return Grant(rule.role, limit, f"{rule.selector} = {rule.value!r}", binding)
        return Grant(self.unlisted_role, self.rate_limit, "unlisted_role",
                     DeviceBinding(client.device_name, self.unlisted_role >= Role.CUSTODY))

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
        unknown = set(entry) - {"cn", "dns", "sha256", "role", "rate_limit", "device_id",
                                "name_devices"}
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
        device_id = entry.get("device_id", "")
        if not isinstance(device_id, str) or device_id != device_id.strip() \
                or len(device_id) > 256 or not device_id.isprintable():
            raise AccessConfigError(f"{where}: device_id must be up to 256 printable "
                                    "characters without leading or trailing spaces")
        name_devices = entry.get("name_devices")
        if name_devices is not None and not isinstance(name_devices, bool):
            raise AccessConfigError(f"{where}: name_devices must be true or false")
        rules.append(ClientRule(selector, value, _role(entry["role"], f"{where}: role"),
                                limit, inherits, device_id, name_devices))
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

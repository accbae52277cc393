"""The people of the simulated organisation: who a ``Person`` is and the organisation's constants.

Owns the ``Person`` record (one person on the Azure side, the Connect side, or both; their Graph
user and Connect contact resources), the tenant's domain, the two well-known accounts (the admin
and the sync user), the directory roles the sandbox knows and the sign-in flags a person can
carry. ``org.py`` builds people from a seed; ``world.py`` indexes and serves them. Both import
this module, so neither needs the other's insides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DOMAIN = "contoso.example"
ADMIN_EMAIL = f"admin@{DOMAIN}"
SYNC_EMAIL = f"presence-sync@{DOMAIN}"
GLOBAL_ADMIN = "Global Administrator"
SECURITY_MANAGER = "Security Manager"
FLAGS = (
    "must_change_password",
    "mfa_required",
    "locked",
    "disabled",
    "federated",
    "device_code_blocked",  # a Conditional Access policy blocks device code flow for this user
)


@dataclass(slots=True, eq=False)
class Person:
    """One person of the simulated organisation, on the Azure side, the Connect side, or both."""

    email: str
    display_name: str
    azure_id: str | None = None
    upn: str | None = None
    mail: str | None = None
    proxy_addresses: list[str] = field(default_factory=list)
    connect_id: str | None = None
    connect_email: str | None = None
    password: str = ""
    flags: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)
    given_name: str = ""
    surname: str = ""
    job_title: str | None = None
    _teams: Any = None
    _connect: Any = None

    @property
    def teams(self) -> Any:
        if self._teams is None:
            from presencectl.sandbox.teams_presence import TeamsPresenceState

            self._teams = TeamsPresenceState()
        return self._teams

    @property
    def connect(self) -> Any:
        if self._connect is None:
            from presencectl.sandbox.connect_presence import ConnectPresenceState

            self._connect = ConnectPresenceState()
        return self._connect

    def graph_user(self) -> dict[str, Any]:
        """The Graph ``user`` resource (default property set plus proxyAddresses)."""
        return {
            "id": self.azure_id,
            "displayName": self.display_name,
            "givenName": self.given_name or None,
            "surname": self.surname or None,
            "jobTitle": self.job_title,
            "mail": self.mail,
            "userPrincipalName": self.upn,
            "proxyAddresses": list(self.proxy_addresses),
            "accountEnabled": "disabled" not in self.flags,
            "businessPhones": [],
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-US",
        }

    def connect_contact(self) -> dict[str, Any]:
        """The Connect address-book contact of a user (extend-dotnet-sdk Models/V3/Contact.cs:
        no roles, no first or last name; Control Panel roles are not visible through the API)."""
        extension = str(1000 + int((self.connect_id or "0")[:4], 16) % 9000)
        return {
            "id": self.connect_id,
            "type": "user",
            "displayName": self.display_name,
            "title": self.job_title,
            "email": self.connect_email,
            "phoneNumbers": [],
            "pbx": {"enabled": True, "extension": extension},
            "messaging": {"jid": f"{self.connect_id}@messaging.{DOMAIN}", "enabled": True},
        }

"""The simulated organisation: deterministic people for a seed, with real-world mess built in.

Owns who exists on which side. For ``users=N`` (default 25) the organisation holds N people:

- ``admin@contoso.example`` — Azure Global Administrator, Connect account contact
  (Security Manager);
- ``presence-sync@contoso.example`` — Azure only, first-login password change pending;
- when N ≥ 10, the mess: two people only in Azure, two only in Connect, one Connect email that
  differs from its Azure mail only in case, one that matches only through an ``smtp:`` proxy
  address, and one email held by two Azure users (one's mail, the other's proxy address);
- everybody else on both sides with the same email.

Passwords and ids are random from the seed; Connect contact ids are distinct from Azure ids.
Building 50,000 people takes well under a second.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from presencectl.sandbox.people import (
    ADMIN_EMAIL,
    DOMAIN,
    GLOBAL_ADMIN,
    SECURITY_MANAGER,
    SYNC_EMAIL,
    Person,
)

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Alice",
    "Amara",
    "Ana",
    "Ben",
    "Bruno",
    "Carla",
    "Chen",
    "Chloe",
    "Dana",
    "Diego",
    "Elena",
    "Emma",
    "Farah",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jamal",
    "Jane",
    "Kai",
    "Kenji",
    "Lara",
    "Leo",
    "Lina",
    "Luca",
    "Maya",
    "Mei",
    "Nadia",
    "Noah",
    "Omar",
    "Priya",
    "Rosa",
    "Sam",
    "Sara",
    "Tariq",
    "Uma",
    "Vera",
    "Wei",
    "Yara",
    "Zoe",
]
LAST_NAMES = [
    "Adams",
    "Baker",
    "Bauer",
    "Chen",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Gupta",
    "Haddad",
    "Ito",
    "Jensen",
    "Kim",
    "Kowalski",
    "Lopez",
    "Martin",
    "Moreau",
    "Nakamura",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Petrov",
    "Quinn",
    "Rossi",
    "Sato",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Tanaka",
    "Torres",
    "Usman",
    "Varga",
    "Wagner",
    "Walsh",
    "Yilmaz",
    "Young",
    "Zhang",
]
JOBS = ("Agent", "Sales", "Support", "Engineer", "Accountant", "Manager", "Receptionist")
PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass
class BuiltOrg:
    tenant_id: str
    connect_client_id: str
    connect_client_secret: str
    people: list[Person]


def _guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _password(rng: random.Random) -> str:
    core = "".join(rng.choices(PASSWORD_ALPHABET, k=14))
    return f"{core}!{rng.randrange(10)}"


def build(users: int = 25, seed: int = 1) -> BuiltOrg:
    """The organisation for ``seed`` with ``users`` people (at least the two fixed accounts)."""
    rng = random.Random(seed)
    tenant_id = _guid(rng)
    connect_client_id = _guid(rng)
    connect_client_secret = "".join(rng.choices(PASSWORD_ALPHABET, k=40))
    people: list[Person] = []
    taken: dict[str, int] = {}

    def person(
        local: str,
        display: str,
        given: str,
        surname: str,
        *,
        azure: bool = True,
        connect: bool = True,
        connect_email: str | None = None,
        proxies: list[str] | None = None,
        flags: set[str] | None = None,
        roles: set[str] | None = None,
    ) -> Person:
        email = f"{local}@{DOMAIN}"
        p = Person(
            email=email,
            display_name=display,
            given_name=given,
            surname=surname,
            password=_password(rng),
            flags=set(flags or ()),
            roles=set(roles or ()),
            job_title=JOBS[len(people) % len(JOBS)],
        )
        azure_id = _guid(rng)
        connect_id = _guid(rng)
        if azure:
            p.azure_id = azure_id
            p.upn = email
            p.mail = email
            p.proxy_addresses = [f"SMTP:{email}", *(proxies or [])]
        if connect:
            p.connect_id = connect_id
            p.connect_email = connect_email or email
        people.append(p)
        return p

    def fresh_name() -> tuple[str, str, str]:
        given = rng.choice(FIRST_NAMES)
        surname = rng.choice(LAST_NAMES)
        base = f"{given}.{surname}".lower()
        n = taken.get(base, 0)
        taken[base] = n + 1
        local = base if n == 0 else f"{base}{n + 1}"
        return local, given, surname

    person("admin", "Contoso Admin", "Contoso", "Admin", roles={GLOBAL_ADMIN, SECURITY_MANAGER})
    person(
        "presence-sync",
        "Presence Sync",
        "Presence",
        "Sync",
        connect=False,
        flags={"must_change_password"},
    )
    taken["admin"] = taken["presence-sync"] = 1

    remaining = max(0, users - 2)
    if remaining >= 8:
        for _ in range(2):  # only in Azure
            local, given, surname = fresh_name()
            person(local, f"{given} {surname}", given, surname, connect=False)
        for _ in range(2):  # only in Connect
            local, given, surname = fresh_name()
            person(local, f"{given} {surname}", given, surname, azure=False)
        # Connect email differs only in case.
        local, given, surname = fresh_name()
        person(
            local,
            f"{given} {surname}",
            given,
            surname,
            connect_email=f"{given}.{surname}{local[len(given) + len(surname) + 1 :]}"
            "@Contoso.Example",
        )
        # Matches only through an smtp: proxy address (a renamed person).
        local, given, surname = fresh_name()
        alias = f"{given[0]}{surname}".lower() + ".old"
        p = person(
            local,
            f"{given} {surname}",
            given,
            surname,
            connect_email=f"{alias}@{DOMAIN}",
            proxies=[f"smtp:{alias}@{DOMAIN}"],
        )
        taken[alias] = 1
        # One email held by two Azure users: A's mail, B's proxy address; Connect has it once.
        local_a, given, surname = fresh_name()
        person(local_a, f"{given} {surname}", given, surname)
        local_b, given_b, surname_b = fresh_name()
        person(
            local_b,
            f"{given_b} {surname_b}",
            given_b,
            surname_b,
            connect=False,
            proxies=[f"smtp:{local_a}@{DOMAIN}"],
        )
        remaining -= 8
        del p
    for _ in range(remaining):
        local, given, surname = fresh_name()
        person(local, f"{given} {surname}", given, surname)
    return BuiltOrg(tenant_id, connect_client_id, connect_client_secret, people)


__all__ = ["ADMIN_EMAIL", "SYNC_EMAIL", "BuiltOrg", "build"]

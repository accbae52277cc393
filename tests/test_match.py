"""Email matching: case, UPN and proxyAddresses, conflicts both ways, unmatched users, scale."""

from __future__ import annotations

from dataclasses import dataclass, field

from presencectl.sync.match import azure_addresses, match_users
from presencectl.sync.model import pair_key


@dataclass(frozen=True)
class AzureUser:
    id: str
    mail: str | None = None
    user_principal_name: str | None = None
    proxy_addresses: tuple[str, ...] = field(default_factory=tuple)
    display_name: str = ""
    account_enabled: bool = True


@dataclass(frozen=True)
class Contact:
    id: str
    email: str | None
    display_name: str = ""


def test_case_insensitive_mail_match() -> None:
    report = match_users(
        [AzureUser("a1", mail="Ann.Lee@Contoso.com")], [Contact("c1", " ann.lee@CONTOSO.com")]
    )
    assert [(p.key, p.azure_id, p.connect_id, p.email) for p in report.pairs] == [
        (pair_key("a1", "c1"), "a1", "c1", "ann.lee@contoso.com")
    ]
    assert not report.unmatched_azure and not report.unmatched_connect and not report.conflicts


def test_upn_and_smtp_proxy_addresses_match_but_other_proxies_do_not() -> None:
    users = [
        AzureUser("a1", mail=None, user_principal_name="bob@contoso.onmicrosoft.com"),
        AzureUser(
            "a2",
            mail="carol@contoso.com",
            proxy_addresses=("SMTP:carol@contoso.com", "smtp:c.diaz@contoso.com"),
        ),
        AzureUser(
            "a3",
            mail="dan@contoso.com",
            proxy_addresses=("SIP:dan.sip@contoso.com", "x500:/o=dan.x@contoso.com"),
        ),
    ]
    contacts = [
        Contact("c1", "BOB@contoso.onmicrosoft.com"),
        Contact("c2", "c.diaz@contoso.com"),
        Contact("c3", "dan.sip@contoso.com"),
    ]
    report = match_users(users, contacts)
    assert {(p.azure_id, p.connect_id) for p in report.pairs} == {("a1", "c1"), ("a2", "c2")}
    assert [u.id for u in report.unmatched_connect] == ["c3"]
    assert [u.id for u in report.unmatched_azure] == ["a3"]
    assert azure_addresses(users[2]) == {"dan@contoso.com"}


def test_connect_email_matching_two_azure_users_is_a_conflict_never_synced() -> None:
    users = [
        AzureUser("a1", mail="eve@contoso.com"),
        AzureUser("a2", mail="eve.old@contoso.com", proxy_addresses=("smtp:EVE@contoso.com",)),
    ]
    report = match_users(users, [Contact("c1", "eve@contoso.com")])
    assert report.pairs == []
    assert [(c.email, c.azure_ids, c.connect_ids) for c in report.conflicts] == [
        ("eve@contoso.com", ("a1", "a2"), ("c1",))
    ]
    assert report.unmatched_azure == []  # conflicted users are reported as conflicts, not unmatched


def test_azure_user_claimed_by_two_contacts_is_a_conflict() -> None:
    users = [AzureUser("a1", mail="fay@contoso.com", user_principal_name="fay.k@contoso.com")]
    contacts = [Contact("c1", "fay@contoso.com"), Contact("c2", "FAY.K@contoso.com")]
    report = match_users(users, contacts)
    assert report.pairs == []
    assert [(c.azure_ids, c.connect_ids) for c in report.conflicts] == [(("a1",), ("c1", "c2"))]
    assert "several Connect contacts" in report.conflicts[0].detail


def test_user_also_named_by_an_ambiguous_email_is_not_paired() -> None:
    users = [
        AzureUser("a1", mail="gus@contoso.com", proxy_addresses=("smtp:team@contoso.com",)),
        AzureUser("a2", mail="hal@contoso.com", proxy_addresses=("smtp:team@contoso.com",)),
    ]
    report = match_users(
        users, [Contact("c1", "team@contoso.com"), Contact("c2", "gus@contoso.com")]
    )
    assert report.pairs == []
    assert len(report.conflicts) == 2


def test_unmatched_reasons_and_rows() -> None:
    users = [
        AzureUser("a1", mail="ivy@contoso.com"),
        AzureUser("a2", mail="jon@contoso.com", account_enabled=False),
        AzureUser("a3", mail="kim@contoso.com", display_name="Kim"),
    ]
    contacts = [
        Contact("c1", None, "Reception"),
        Contact("c2", "jon@contoso.com"),
        Contact("c3", "kim@contoso.com"),
    ]
    report = match_users(users, contacts)
    assert [(p.azure_id, p.display_name) for p in report.pairs] == [("a3", "Kim")]
    by_status = {(r["email"], r["status"], r["detail"]) for r in report.rows()}
    assert ("ivy@contoso.com", "unmatched", "no Connect contact with this email") in by_status
    assert ("jon@contoso.com", "unmatched", "account disabled") in by_status
    assert ("jon@contoso.com", "unmatched", "no Azure user with this email") in by_status
    assert ("", "unmatched", "contact has no email") in by_status
    assert ("kim@contoso.com", "matched", "Kim") in by_status


def test_duplicate_ids_are_counted_once() -> None:
    report = match_users(
        [AzureUser("a1", mail="lu@contoso.com"), AzureUser("a1", mail="lu@contoso.com")],
        [Contact("c1", "lu@contoso.com"), Contact("c1", "lu@contoso.com")],
    )
    assert len(report.pairs) == 1 and not report.conflicts


def test_fifty_thousand_users_are_matched() -> None:
    n = 50_000
    users = [
        AzureUser(
            f"a{i}",
            mail=f"user{i}@contoso.com",
            user_principal_name=f"u{i}@contoso.onmicrosoft.com",
            proxy_addresses=(f"SMTP:user{i}@contoso.com", f"smtp:alias{i}@contoso.com"),
        )
        for i in range(n)
    ]
    contacts = [
        Contact(f"c{i}", f"USER{i}@contoso.com" if i % 2 else f"alias{i}@contoso.com")
        for i in range(n)
    ]
    report = match_users(users, contacts)
    assert len(report.pairs) == n
    assert not report.conflicts and not report.unmatched_azure and not report.unmatched_connect

"""Customer ids: kept as given, compared as configured, sanitised only in keys.

The key function (gateway.storage.keys.customer_key) and the ingress rule
(gateway.pipeline.identify.customer_id) against hostile ids: CR/LF, path
segments, over-long ids, Unicode lookalikes and format characters, empty.
"""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway import config, customers
from gateway.config import RouteSettings
from gateway.links import revocations
from gateway.links.authz import StaticMap
from gateway.mime.parse import parse
from gateway.mime.source import Source
from gateway.pipeline.identify import customer_id
from gateway.spool.envelope import Envelope
from gateway.storage.keys import MAX_CUSTOMER_KEY, customer_key, file_key
from tests.harness import render_config

SEGMENT = re.compile(r"[a-z0-9@._+~-]+")

HOSTILE = [
    "CUST-998877\r\nX-Injected: 1", "../../etc/passwd", "..", ".", "/", "a/../../b", "\\..\\windows",
    "x" * 10_000, "\u0421UST-998877",  # a Cyrillic Es for the Latin C
    "\uff23\uff35\uff33\uff34-998877",  # fullwidth CUST
    "CUST\u202e-998877", "CUST\u200b-998877", "", "   ", "\x00", "日本語のお客様", "~", "%2e%2e%2f",
]


def test_the_key_form_of_a_crm_id_is_its_lower_case_and_the_id_itself_is_kept() -> None:
    assert customer_key("CUST-998877") == customer_key("cust-998877") == "cust-998877"
    assert customer_key("Alice@Example.COM") == "alice@example.com"
    assert customers.checked("  CUST-998877 ") == "CUST-998877"


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_id_never_makes_a_key_outside_its_customer_segment(value: str) -> None:
    key = customer_key(value)
    assert SEGMENT.fullmatch(key), key
    assert key not in (".", "..") and not key.startswith(".") and len(key) <= MAX_CUSTOMER_KEY
    full = file_key(value, "../../x.pdf")
    parts = full.split("/")
    assert len(parts) == 3 and parts[0] == "uploads" and parts[1] == key and ".." not in parts


def test_ids_that_sanitising_would_merge_keep_apart_and_lookalikes_do_not_share_the_real_prefix() -> None:
    real = customer_key("CUST-998877")
    for lookalike in ("\u0421UST-998877", "\uff23\uff35\uff33\uff34-998877", "CUST 998877", "CUST/998877"):
        assert customer_key(lookalike) != real
        assert "~" in customer_key(lookalike)
    assert customer_key("a b") != customer_key("a_b") == "a_b"
    assert customer_key("x" * 200) != customer_key("x" * 201)
    assert customer_key("") == "unknown"
    # Case folding, not just lower(): the key agrees with the comparison.
    assert customer_key("STRASSE") == customer_key("straße") == "strasse"


@pytest.mark.parametrize("value,why", [
    ("", "empty"), ("   ", "empty"), ("CUST\r\n-1", "control character"), ("CUST\x00", "control character"),
    ("CUST\x85X", "control character"), ("CUST\ufffd1", "undecodable"), ("CUST\u202e1", "format character"),
    ("CUST\u200b1", "format character"),
    ("x" * 129, "longer than 128"),
])
def test_checked_refuses_what_could_act_rather_than_read(value: str, why: str) -> None:
    with pytest.raises(customers.InvalidCustomerId, match=why):
        customers.checked(value)


def test_lookalikes_and_other_scripts_are_kept_as_given_and_stay_different_ids() -> None:
    assert customers.checked("\u0421UST-998877") == "\u0421UST-998877"
    assert customers.checked("x" * 128) == "x" * 128
    for mode in customers.MATCHES:
        assert not customers.same("\u0421UST-998877", "CUST-998877", mode)
        assert not customers.same("\uff23\uff35\uff33\uff34-998877", "CUST-998877", mode)
    assert customers.same("CUST-998877", "cust-998877", "case-insensitive")
    assert not customers.same("CUST-998877", "cust-998877", "exact")


def test_the_static_map_compares_as_configured() -> None:
    lenient = StaticMap({"ann": ["CUST-998877"], "bea": ["cust-998877"], "carl": ["CUST-111"]})
    strict = StaticMap({"ann": ["CUST-998877"], "bea": ["cust-998877"]}, "exact")

    async def check(m: StaticMap, agent: str, customer: str) -> bool:
        return (await m.check(agent, customer)).allowed

    assert asyncio.run(check(lenient, "ann", "CUST-998877")) and asyncio.run(check(lenient, "bea", "CUST-998877"))
    assert asyncio.run(check(lenient, "ann", "Cust-998877"))
    assert not asyncio.run(check(lenient, "carl", "CUST-998877"))
    assert asyncio.run(check(strict, "ann", "CUST-998877"))
    assert not asyncio.run(check(strict, "bea", "CUST-998877")) and asyncio.run(check(strict, "bea", "cust-998877"))


def test_a_customer_revocation_matches_whatever_the_case() -> None:
    assert revocations.marker_key("customer", "CUST-1") == revocations.marker_key("customer", "cust-1")
    assert revocations.marker_key("message", "<A@x>") != revocations.marker_key("message", "<a@x>")


def _cfg(tmp: Path, authz: dict[str, object]) -> str:
    path = tmp / "gateway.toml"
    path.write_text(render_config({
        "gateway": {"hostname": "gw.test", "spool_dir": str(tmp / "spool")},
        "http": {"listen": "127.0.0.1:8025", "base_url": "http://127.0.0.1:8025"},
        "links": {"keys": [{"id": "k1", "file": str(tmp / "link.key"), "create_missing": True}]},
        "storage.local": {"backend": "filesystem", "path": str(tmp / "objects")},
        "authorization": authz,
        "routes": [{"name": "contact", "domains": ["contact.example"], "next_hop": "maildir:out",
                    "storage": "local"}],
    }))
    return str(path)


def test_the_match_key_and_the_map_ids_are_validated_with_a_clear_error(tmp_path: Path) -> None:
    cfg = config.load(_cfg(tmp_path, {"mode": "allow-all"}))
    assert cfg.authorization.customer_id_match == "case-insensitive"
    with pytest.raises(config.ConfigError) as e:
        config.load(_cfg(tmp_path, {"mode": "allow-all", "customer_id_match": "ignore-case"}))
    assert "authorization.customer_id_match" in str(e.value) and "ignore-case" in str(e.value)
    assert "exact" in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        config.load(_cfg(tmp_path, {"mode": "static", "agents": {"ann": ["CUST\u202e-1"]}}))
    assert "authorization.agents" in str(e.value) and "format character" in str(e.value)


def _route() -> RouteSettings:
    return RouteSettings.model_validate({"name": "c", "domains": ["contact.example"], "next_hop": "maildir:x",
                                         "storage": "local", "customer_id": {"trusted_networks": ["192.0.2.0/24"]}})


def _identify(tmp: Path, header: str | None, client: str = "192.0.2.1", mail_from: str = "Customer@Example.NET",
              vouched: str = "") -> tuple[str, bool]:
    head = f"X-CustomerId: {header}\r\n" if header is not None else ""
    path = tmp / "m.eml"
    path.write_bytes(f"From: a@example.net\r\n{head}Subject: s\r\n\r\nbody\r\n".encode())
    env = Envelope(queue_id="Q1", mail_from=mail_from, rcpt_tos=["s@contact.example"], route="c", received_at=0.0,
                   client_addr=client, customer_id=vouched)
    with Source(path) as src:
        return customer_id(parse(src), env, _route())


def test_ingress_keeps_the_header_id_as_given_from_a_trusted_client(tmp_path: Path) -> None:
    assert _identify(tmp_path, "CUST-998877") == ("CUST-998877", True)
    assert _identify(tmp_path, "CUST-998877", client="198.51.100.9") == ("Customer@Example.NET", False)
    assert _identify(tmp_path, None) == ("Customer@Example.NET", True)
    assert _identify(tmp_path, "ignored", vouched="ACME-7") == ("ACME-7", True)
    # Non-ASCII ids come as RFC 2047 encoded words and are kept decoded.
    assert _identify(tmp_path, "=?UTF-8?B?0KHQo9Ch0KItOTk4ODc3?=") == ("\u0421\u0423\u0421\u0422-998877", True)


@pytest.mark.parametrize("hostile", ["CUST\u202e-998877", "x" * 300, "CUST\u200b998877", "CUST\u00e9",
                                     "=?UTF-8?Q?CUST=0D=0AX-Injected:_1?=", "=?UTF-8?B?Q1VTVOKAri0x?="])
def test_ingress_refuses_a_hostile_header_id_and_the_fallback_applies(tmp_path: Path, hostile: str) -> None:
    got, believed = _identify(tmp_path, hostile)
    assert (got, believed) == ("Customer@Example.NET", False)


def test_ingress_path_segments_in_an_id_stay_in_the_id_and_out_of_the_key(tmp_path: Path) -> None:
    got, _ = _identify(tmp_path, "ACME/../../other")
    assert got == "ACME/../../other"
    assert file_key(got, "a.pdf").split("/")[1] == customer_key(got)
    assert "/" not in customer_key(got) and customer_key(got).startswith("acme_.._.._other~")


def test_ingress_without_a_usable_id_gives_unknown(tmp_path: Path) -> None:
    assert _identify(tmp_path, None, mail_from="") == ("unknown", True)
    assert _identify(tmp_path, None, mail_from="x" * 300 + "@example.net") == ("unknown", True)


@pytest.mark.parametrize("lookalike, plain", [
    ("\u212aUNDE-1", "kunde-1"),  # the Kelvin sign folds to k
    ("\u017fam@example.net", "sam@example.net"),  # the long s folds to s
    ("\ufb01le-7", "file-7"),  # the ligature fi folds to fi
    ("\u212bsa", "\u00e5sa"),  # the Angstrom sign folds to a-ring
])
def test_a_compatibility_lookalike_is_never_the_id_it_imitates(lookalike: str, plain: str) -> None:
    assert not customers.same(lookalike, plain, "case-insensitive")
    assert customer_key(lookalike) != customer_key(plain)
    assert revocations.marker_key("customer", lookalike) != revocations.marker_key("customer", plain)
    assert asyncio.run(StaticMap({"ann": [plain]}).check("ann", lookalike)).allowed is False
    # Case still does not matter, for plain letters and the lookalike's own.
    assert customers.same(plain.upper(), plain, "case-insensitive")
    head, rest = lookalike[0], lookalike[1:]
    assert customers.same(head + rest.lower(), head + rest.upper(), "case-insensitive")
    # Fullwidth letters fold among themselves as before.
    assert customers.same("\uff21BC", "\uff41bc", "case-insensitive")

"""The pieces of authentication that are pure functions: the streamed DKIM
body hash must equal dkimpy's over the whole body, for any body, any way
the body is cut into reads; and the authserv-id of an incoming
Authentication-Results header is read the way RFC 8601 writes it."""
from __future__ import annotations

import hashlib

from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.authn import bodyhash
from gateway.authn.bodyhash import body_hashes
from gateway.authn.verify import authserv_id_of

# Lines of printable text, spaces and tabs (the spool holds CRLF line ends only).
line = st.text(alphabet=st.sampled_from(list("ab .\t")), max_size=12).map(str.encode)
bodies = st.tuples(st.lists(line, max_size=12), st.booleans()).map(
    lambda t: b"\r\n".join(t[0]) + (b"\r\n" if t[1] and t[0] else b""))


def _cuts(body: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        out.append(body[pos:pos + n])
        pos += n
    out.append(body[pos:])
    return out


@settings(max_examples=250, deadline=None)
@given(body=bodies, sizes=st.lists(st.integers(min_value=0, max_value=7), max_size=20),
       limit=st.one_of(st.none(), st.integers(min_value=0, max_value=40)))
def test_streamed_body_hash_equals_dkimpy(body: bytes, sizes: list[int], limit: int | None) -> None:
    keys = [(b"simple", b"rsa-sha256", limit), (b"relaxed", b"rsa-sha256", limit), (b"relaxed", b"rsa-sha1", None)]
    got = body_hashes(keys, _cuts(body, sizes))
    for canon, algo, lim in keys:
        expected = (Simple if canon == b"simple" else Relaxed).canonicalize_body(body)
        if lim is not None:
            expected = expected[:lim]
        h = hashlib.sha256 if algo == b"rsa-sha256" else hashlib.sha1
        assert got[(canon, algo, lim)] == h(expected).digest(), (canon, body)


def test_very_long_lines_are_hashed_in_pieces_with_the_same_result() -> None:
    # Lines longer than bodyhash.MAX_CARRY, cut at awkward places (inside
    # white space runs, between CR and LF).
    long = b"a  b\t\t c " * (bodyhash.MAX_CARRY // 5)
    body = long + b"   \r\n" + long + b"\r\n\r\n" + b"tail  \t"
    keys = [(b"simple", b"rsa-sha256", None), (b"relaxed", b"rsa-sha256", None)]
    got = body_hashes(keys, _cuts(body, [bodyhash.MAX_CARRY + 3, 7, len(long) - 2, 2, 1, 3]))
    assert got[keys[0]] == hashlib.sha256(Simple.canonicalize_body(body)).digest()
    assert got[keys[1]] == hashlib.sha256(Relaxed.canonicalize_body(body)).digest()


def test_authserv_id_is_read_past_comments_and_version() -> None:
    assert authserv_id_of(b"Authentication-Results: GW.test; dkim=pass\r\n") == "gw.test"
    assert authserv_id_of(b"Authentication-Results: (forged) gw.test 1; spf=pass\r\n") == "gw.test"
    assert authserv_id_of(b"Authentication-Results:\r\n\tmx.other.example;\r\n\tdkim=pass\r\n") == "mx.other.example"


def test_authserv_id_is_read_as_an_rfc_parser_reads_it() -> None:
    """An escaped parenthesis does not end a comment, comments nest, and a
    quoted id is the same id: a forgery written so must still be ours to cut."""
    import authres

    for value in (rb"(a\) b) gw.test; dkim=pass", rb"(\() gw.test; dkim=pass", b"(a (b) c) gw.test; dkim=pass",
                  b'"gw.test"; dkim=pass', b'"GW.test" 1; dkim=pass', b"gw.test(c); dkim=pass"):
        assert authserv_id_of(b"Authentication-Results: " + value + b"\r\n") == "gw.test", value
        if not value.startswith(b'"'):  # authres refuses a quoted id; RFC 8601 allows one
            assert authres.AuthenticationResultsHeader.parse_value(value.decode()).authserv_id == "gw.test"
    assert authserv_id_of(b"Authentication-Results: (gw.test) mx.other.example; dkim=pass\r\n") == "mx.other.example"

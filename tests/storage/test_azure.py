"""The Azure Blob backend against Azurite on loopback.

Azurite checks Shared Key signatures and SAS tokens for real (changed,
expired, missing or misapplied SAS: 403).  With ``--oauth basic`` over HTTPS
it accepts Entra-ID-shaped bearer tokens (issuer, audience, lifetime checked;
not the signature) and serves user-delegation keys, so both SAS kinds are
tested.  Azurite reports server encryption on every blob but ignores
encryption scopes, so the scope is checked on the requests sent.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import BlobServiceClient

from gateway.storage.azure import AzureBlobStorage, account_name_from_url
from gateway.storage.base import ObjectMeta, ObjectNotFound, StorageError
from gateway.storage.settings import AzureStorageSettings
from tests.servers.azurite import Azurite
from tests.storage.helpers import (FILENAME, Attachment, check_create, disposition_filename, fallback_filename,
                                   http_get)

KEY_ENV = "GW_TEST_AZURE_KEY"
KEY = "uploads/cust-42/20261127T101500.000001Z-invoice.pdf"
META = ObjectMeta(content_type="application/pdf", filename=FILENAME,
                  metadata={"queue-id": "4XyZ0aB1", "customer-id": "cust-42"})


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    """Azurite's Blob service over HTTP with the development account key."""
    with Azurite() as a:
        os.environ[KEY_ENV] = a.account_key
        yield a
        os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="module")
def admin(azurite: Azurite) -> Iterator[BlobServiceClient]:
    """A plain (sync) client, to look at the server behind the backend's back."""
    client = BlobServiceClient(azurite.account_url, credential={"account_name": azurite.account_name,
                                                                "account_key": azurite.account_key})
    yield client
    client.close()


@pytest.fixture
def container(admin: BlobServiceClient) -> str:
    name = f"gw-{uuid.uuid4().hex[:12]}"
    admin.create_container(name)
    return name


def settings(azurite: Azurite, container: str, **kw: Any) -> AzureStorageSettings:
    base: dict[str, Any] = dict(backend="azure", account_url=azurite.account_url, account_key_env=KEY_ENV,
                                container=container, prefix="attachments/")
    base.update(kw)
    return AzureStorageSettings(**base)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_account_name_from_url() -> None:
    assert account_name_from_url("https://acme.blob.core.windows.net") == "acme"
    assert account_name_from_url("http://127.0.0.1:10000/devstoreaccount1") == "devstoreaccount1"
    assert account_name_from_url("http://localhost:10000/devstoreaccount1/") == "devstoreaccount1"


def test_30mb_put_streams_blocks_and_arrives_byte_for_byte(admin: BlobServiceClient, azurite: Azurite,
                                                           container: str) -> None:
    uncommitted: list[int] = []

    def before_last() -> None:
        # Blocks are on the server before the last chunk is read: never joined whole.
        blob = admin.get_blob_client(container, "attachments/" + KEY)
        _, blocks = blob.get_block_list("uncommitted")
        uncommitted.append(len(blocks))

    att = Attachment(before_last=before_last)

    async def go() -> Any:
        store = AzureBlobStorage("az", settings(azurite, container), Path("."))
        await store.start()
        try:
            stored = await store.put(KEY, att.chunks(), META)
            assert threading.get_ident() not in att.threads, "the chunk iterator ran on the event loop"
            return stored, await store.stat(KEY)
        finally:
            await store.close()

    stored, stat = run(go())
    assert uncommitted and uncommitted[0] >= 2  # 30 MB in 8 MiB blocks
    assert stored.key == KEY and stored.size == att.size and stored.sha256 == att.sha256()

    blob = admin.get_blob_client(container, "attachments/" + KEY)
    body = blob.download_blob().readall()
    assert len(body) == att.size and hashlib.sha256(body).hexdigest() == att.sha256()
    props = blob.get_blob_properties()
    assert props.blob_type == "BlockBlob"
    assert props.content_settings.content_type == "application/pdf"
    assert disposition_filename(props.content_settings.content_disposition or "") == FILENAME
    assert props.metadata["queue_id"] == "4XyZ0aB1"
    assert props.metadata["gateway_sha256"] == att.sha256()
    assert props.server_encrypted is True
    _, uncommitted_after = blob.get_block_list("uncommitted")
    assert uncommitted_after == []

    assert stat is not None and stat.sha256 == att.sha256() and stat.size == att.size
    assert stat.extra["encryption"] == "Microsoft-managed" and stat.extra["server_encrypted"] == "true"
    assert stat.metadata["customer_id"] == "cust-42" and stat.metadata["filename"] == FILENAME


def test_encryption_scope_is_sent_with_every_write(azurite: Azurite, container: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    scopes: list[tuple[str, str, str | None]] = []

    def hook(request: Any) -> None:
        req = request.http_request
        comp = dict(parse_qsl(urlsplit(req.url).query)).get("comp", "")
        scopes.append((req.method, comp, req.headers.get("x-ms-encryption-scope")))

    original = AzureBlobStorage._client_kwargs
    monkeypatch.setattr(AzureBlobStorage, "_client_kwargs",
                        lambda self: {**original(self), "raw_request_hook": hook})

    async def go() -> None:
        store = AzureBlobStorage("az", settings(azurite, container, encryption_scope="gateway-cmk",
                                                block_size="1MiB"), Path("."))
        await store.start()
        try:
            await store.put(KEY, Attachment(size=3 * 1024 * 1024).chunks(), META)
            await store.put("links/x.json", [b"{}"], ObjectMeta(content_type="application/json"))
        finally:
            await store.close()

    run(go())
    writes = [s for s in scopes if s[0] == "PUT"]
    assert {comp for _, comp, _ in writes} == {"block", "blocklist", ""}
    assert all(scope == "gateway-cmk" for _, _, scope in writes), writes


def test_sas_url_downloads_with_filename_and_refuses_tampering_and_expiry(azurite: Azurite,
                                                                         container: str) -> None:
    att = Attachment(size=2 * 1024 * 1024 + 3)

    async def go() -> tuple[str | None, str | None]:
        store = AzureBlobStorage("az", settings(azurite, container, url_ttl=600), Path("."))
        await store.start()
        try:
            await store.put(KEY, att.chunks(), META)
            return await store.signed_url(KEY, FILENAME, 300), await store.signed_url(KEY, FILENAME, 1)
        finally:
            await store.close()

    url, short = run(go())
    assert url is not None and short is not None
    q = dict(parse_qsl(urlsplit(url).query))
    assert q["sp"] == "r" and q["sr"] == "b" and "skoid" not in q  # account-key SAS, read, one blob

    ok = http_get(url)
    assert ok.status == 200 and hashlib.sha256(ok.body).hexdigest() == att.sha256()
    assert disposition_filename(ok.headers["Content-Disposition"]) == FILENAME
    assert fallback_filename(ok.headers["Content-Disposition"]).isascii()

    parts = urlsplit(url)
    sig = base64.b64decode(q["sig"])
    bad_sig = dict(q, sig=base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode())
    bad_name = dict(q, rscd='attachment; filename="evil.html"')
    write = dict(q, sp="rw")
    for query, path in ((bad_sig, parts.path), (bad_name, parts.path), (write, parts.path),
                        (q, parts.path + "x")):
        tampered = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
        assert http_get(tampered).status == 403, tampered
    # Without any SAS the private container does not answer with the blob.
    assert http_get(urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))).status in (401, 403, 404)

    time.sleep(2.5)
    assert http_get(short).status == 403  # expired


def test_failed_stream_commits_nothing(azurite: Azurite, container: str) -> None:
    att = Attachment()

    async def go() -> Any:
        store = AzureBlobStorage("az", settings(azurite, container), Path("."))
        await store.start()
        try:
            with pytest.raises(StorageError, match="spool file vanished"):
                await store.put(KEY, att.chunks(fail_after=20 * 1000 * 1000), META)
            return await store.stat(KEY)
        finally:
            await store.close()

    assert run(go()) is None


def test_open_stat_delete_round_trip(azurite: Azurite, container: str) -> None:
    async def go() -> None:
        store = AzureBlobStorage("az", settings(azurite, container), Path("."))
        await store.start()
        try:
            assert await store.stat(KEY) is None
            with pytest.raises(ObjectNotFound):
                [c async for c in store.open(KEY)]
            stored = await store.put(KEY, [b"hello ", b"", b"world"], META)
            assert stored.size == 11
            assert b"".join([c async for c in store.open(KEY)]) == b"hello world"
            st = await store.stat(KEY)
            assert st is not None and st.sha256 == stored.sha256
            await store.delete(KEY)
            await store.delete(KEY)
            assert await store.stat(KEY) is None
            assert (await store.put("empty", [], ObjectMeta())).size == 0
        finally:
            await store.close()

    run(go())


def test_missing_container_and_wrong_key_are_clear_errors(azurite: Azurite) -> None:
    async def go(s: AzureStorageSettings) -> None:
        store = AzureBlobStorage("az", s, Path("."))
        try:
            await store.start()
        finally:
            await store.close()

    with pytest.raises(StorageError, match="container does not exist"):
        run(go(settings(azurite, "gw-no-such-container")))
    wrong = base64.b64encode(b"w" * 64).decode()
    os.environ["GW_TEST_AZURE_WRONG"] = wrong
    try:
        with pytest.raises(StorageError, match="403") as e:
            run(go(settings(azurite, "gw-no-such-container", account_key_env="GW_TEST_AZURE_WRONG")))
        assert wrong not in str(e.value)
    finally:
        del os.environ["GW_TEST_AZURE_WRONG"]


# -- user-delegation SAS (token credential) ----------------------------------------------


class EntraTestCredential:
    """An async TokenCredential handing out Entra-ID-shaped bearer tokens
    that Azurite's basic OAuth accepts (it does not check signatures)."""

    def __init__(self) -> None:
        self.oid = str(uuid.uuid4())
        self.tid = str(uuid.uuid4())
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        now = int(time.time())

        def b64(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{self.tid}/",
                  "iat": now, "nbf": now - 60, "exp": now + 3600, "oid": self.oid, "tid": self.tid}
        token = f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.{b64({'sig': 'unchecked'})}"
        return AccessToken(token, now + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> "EntraTestCredential":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.fixture(scope="module")
def azurite_oauth() -> Iterator[Azurite]:
    """Azurite over HTTPS (self-signed) accepting bearer tokens."""
    with Azurite(oauth=True) as a:
        yield a


def test_user_delegation_sas_with_a_token_credential(azurite_oauth: Azurite) -> None:
    az = azurite_oauth
    assert az.ca_file is not None
    name = f"gw-{uuid.uuid4().hex[:12]}"
    cred = EntraTestCredential()
    s = AzureStorageSettings(backend="azure", account_url=az.account_url, container=name,
                             ca_file=str(az.ca_file))
    att = Attachment(size=9 * 1024 * 1024)

    async def go() -> tuple[str | None, Any]:
        from azure.storage.blob.aio import BlobServiceClient as AsyncClient

        async with AsyncClient(az.account_url, credential=cred, connection_verify=str(az.ca_file)) as svc:
            await svc.create_container(name)
        store = AzureBlobStorage("az", s, Path("."), token_credential=cred)
        await store.start()  # fetches a user-delegation key
        try:
            stored = await store.put(KEY, att.chunks(), META)
            return await store.signed_url(KEY, FILENAME, 300), stored
        finally:
            await store.close()

    url, stored = run(go())
    assert url is not None
    assert stored.sha256 == att.sha256() and cred.calls >= 1
    q = dict(parse_qsl(urlsplit(url).query))
    assert q["skoid"] == cred.oid and q["sktid"] == cred.tid and q["sp"] == "r"
    assert urlsplit(url).scheme == "https" and q.get("spr") == "https"

    ok = http_get(url, cafile=str(az.ca_file))
    assert ok.status == 200 and hashlib.sha256(ok.body).hexdigest() == att.sha256()
    assert disposition_filename(ok.headers["Content-Disposition"]) == FILENAME
    parts = urlsplit(url)
    bad = dict(q, skoid=str(uuid.uuid4()))
    tampered = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(bad), ""))
    assert http_get(tampered, cafile=str(az.ca_file)).status == 403


def test_a_store_that_is_down_fails_fast_with_a_clear_error(azurite: Azurite, container: str) -> None:
    from tests.servers.ports import free_port

    url = f"http://127.0.0.1:{free_port()}/{azurite.account_name}"
    s = settings(azurite, container, account_url=url, connect_timeout=1, max_attempts=2)

    async def go() -> None:
        store = AzureBlobStorage("az", s, Path("."))
        try:
            await store.start()
        finally:
            await store.close()

    t0 = time.monotonic()
    with pytest.raises(StorageError, match="ServiceRequestError"):
        run(go())
    assert time.monotonic() - t0 < 30


def test_create_if_absent_has_one_winner(azurite: Azurite, container: str) -> None:
    async def go() -> None:
        store = AzureBlobStorage("az", settings(azurite, container), Path("."))
        await store.start()
        try:
            await check_create(store)
        finally:
            await store.close()
    run(go())

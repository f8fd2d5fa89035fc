"""The cloud backends' config schema: defaults, and refusals with messages
that say what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.config import ConfigError, load
from gateway.storage.settings import (AzureStorageSettings, GcsStorageSettings, S3StorageSettings,
                                      StorageSettings)

ADAPTER: TypeAdapter[Any] = TypeAdapter(StorageSettings)
S3 = {"backend": "s3", "bucket": "attachments-eu", "region": "eu-central-1"}


def error(table: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as e:
        ADAPTER.validate_python(table)
    return "\n".join(err["msg"] for err in e.value.errors())


def test_s3_defaults() -> None:
    s = ADAPTER.validate_python(S3)
    assert isinstance(s, S3StorageSettings)
    assert s.encryption == "AES256" and s.url_ttl == 900 and s.multipart_chunk_size == 8 * 1024 * 1024
    assert s.prefix == "" and not s.staging and s.max_attempts == 3


@pytest.mark.parametrize("value", ["none", "None", "", None, False, "aws:kms:dsse", "SSE-C"])
def test_s3_encryption_cannot_be_turned_off(value: Any) -> None:
    msg = error({**S3, "encryption": value})
    assert "cannot be turned off" in msg and '"AES256"' in msg and '"aws:kms"' in msg


def refused_config(tmp_path: Path, links: str, store: str) -> str:
    """The ConfigError of a config file with one route on ``[storage.s3]``."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[links]
{links}
keys = [{{ id = "k1", env = "GW_LINK_KEY" }}]

[storage.s3]
backend = "s3"
bucket = "attachments-eu"
region = "eu-central-1"
{store}

[[routes]]
name = "support"
domains = ["support.example"]
next_hop = "smtp://127.0.0.1:2526"
storage = "s3"
""")
    with pytest.raises(ConfigError) as e:
        load(cfg, base_dir=str(tmp_path))
    return str(e.value)


def test_s3_encryption_none_stops_the_config_file(tmp_path: Path) -> None:
    e = refused_config(tmp_path, "", 'encryption = "none"')
    assert "encryption" in e and "'none'" in e and "cannot be turned off" in e


def test_s3_kms_and_keys_and_sizes() -> None:
    ok = ADAPTER.validate_python({**S3, "encryption": "aws:kms", "kms_key_id": "alias/gateway",
                                  "multipart_chunk_size": "16MiB", "url_ttl": "5m", "prefix": "att"})
    assert ok.kms_key_id == "alias/gateway" and ok.multipart_chunk_size == 16 * 1024 * 1024
    assert ok.url_ttl == 300 and ok.prefix == "att/"
    assert "encryption is not \"aws:kms\"" in error({**S3, "kms_key_id": "k"})
    assert "exactly one of" in error({**S3, "access_key_id": "AKIA"})
    assert "without access_key_id" in error({**S3, "secret_access_key_env": "X"})
    assert "greater than or equal to 5242880" in error({**S3, "multipart_chunk_size": "1MiB"})
    assert "less than or equal to 604800" in error({**S3, "url_ttl": "8d"})
    assert "expected a size" in error({**S3, "multipart_chunk_size": "lots"})
    assert "region name" in error({**S3, "region": "EU Central"})
    assert "bucket name" in error({**S3, "bucket": "Attachments_EU"})
    assert "relative key prefix" in error({**S3, "prefix": "/abs"})
    assert "relative key prefix" in error({**S3, "prefix": "a/../b"})
    assert "unknown" not in error({**S3, "encryption": "none"})
    with pytest.raises(ValidationError, match="extra"):
        ADAPTER.validate_python({**S3, "secret_access_key": "inline secrets are not a key"})


def test_s3_staging_must_not_overlap() -> None:
    assert ADAPTER.validate_python({**S3, "staging_bucket": "attachments-staging"}).staging
    ok = ADAPTER.validate_python({**S3, "prefix": "attachments/", "staging_prefix": "staging/"})
    assert ok.staging and ok.staging_prefix == "staging/"
    for prefix, staging in (("", "staging/"), ("a/", "a/staging/"), ("a/b/", "a/")):
        assert "overlap" in error({**S3, "prefix": prefix, "staging_prefix": staging})


def test_azure_settings() -> None:
    s = ADAPTER.validate_python({"backend": "azure", "container": "attachments",
                                 "account_url": "https://acme.blob.core.windows.net"})
    assert isinstance(s, AzureStorageSettings) and s.url_ttl == 900 and s.block_size == 8 * 1024 * 1024
    assert "expected account_url" in error({"backend": "azure", "container": "attachments"})
    assert "already names the account" in error({"backend": "azure", "container": "attachments",
                                                 "connection_string_env": "C",
                                                 "account_url": "https://acme.blob.core.windows.net"})
    assert "container name" in error({"backend": "azure", "container": "Bad_Name", "account_url": "https://a.b"})


def test_gcs_settings() -> None:
    s = ADAPTER.validate_python({"backend": "gcs", "bucket": "attachments"})
    assert isinstance(s, GcsStorageSettings) and s.upload_chunk_size == 8 * 1024 * 1024 and not s.anonymous
    assert "multiple of 256 KiB" in error({"backend": "gcs", "bucket": "attachments",
                                          "upload_chunk_size": 1_000_000})
    assert "cryptoKeys" in error({"backend": "gcs", "bucket": "attachments", "kms_key_name": "my-key"})


def test_retention_days_and_part_concurrency() -> None:
    for table in (S3, {"backend": "gcs", "bucket": "attachments"}, {"backend": "filesystem"},
                  {"backend": "azure", "container": "attachments", "account_url": "https://a.blob.core.windows.net"}):
        assert ADAPTER.validate_python(table).retention_days == 30
        assert "greater than or equal to 1" in error({**table, "retention_days": 0})
        assert "less than or equal to 3650" in error({**table, "retention_days": 4000})
    s = ADAPTER.validate_python(S3)
    assert s.part_concurrency == 4
    assert "greater than or equal to 1" in error({**S3, "part_concurrency": 0})
    assert "part_concurrency = 12 is more than max_connections = 10: expected part_concurrency <= " \
           "max_connections" in error({**S3, "part_concurrency": 12})


def test_retention_shorter_than_the_links_is_refused(tmp_path: Path) -> None:
    e = refused_config(tmp_path, 'ttl = "10d"', "retention_days = 7")
    assert ("storage.s3.retention_days: 7: attachments would be deleted before their links expire "
            "(links.ttl = 864000 s): expected at least 10") in e

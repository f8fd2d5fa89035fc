"""Config schema of the storage backends (the ``[storage.NAME]`` tables).

Each backend states its settings and defaults once, here, beside the schema;
``backend`` selects the model.  Unknown keys are errors.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.units import parse_duration, parse_size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# How long attachments are kept by default: `storage apply-retention` writes a
# lifecycle rule deleting ``PREFIX uploads/`` objects older than this.
DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650


_Days = Annotated[int, Field(ge=1, le=MAX_RETENTION_DAYS)]


class _Retained(_Strict):
    """What every store shares: how long each kind of thing it holds is kept.

    Cloud stores get these as lifecycle rules (``storage apply-retention``);
    the filesystem store's worker processes delete what is older themselves
    (``gateway.storage.sweep``).  The floors that depend on other sections
    (links.ttl, upload.invitation_ttl, upload.abandon_after) are checked in
    gateway.config."""

    # Days an attachment under PREFIX uploads/ is kept.  Must cover links.ttl.
    retention_days: _Days = DEFAULT_RETENTION_DAYS
    # Days a refused file under a route's quarantine prefix is kept.
    quarantine_retention_days: _Days = 30
    # Days link records (links/), landing pages (pages/) and revocation
    # markers (revoked/) are kept; None: retention_days.  A link can be
    # refreshed as long as its file is kept, so never less than retention_days.
    link_retention_days: _Days | None = None
    # Days upload-page invitations (invitations/) are kept; at least
    # upload.invitation_ttl.
    invitation_retention_days: _Days = 30
    # Days asynchronous upload job records (jobs/) are kept.
    job_retention_days: _Days = 7
    # Days staged uploads (staging/, the S3 staging prefix, unfinished
    # multipart uploads) and leftovers of storage check (check/) are kept; at
    # least upload.abandon_after.
    staging_retention_days: _Days = 1
    # Days the fleet's agreements are kept: automatic-reply claims
    # (autoreply/) and turns of periodic work (leases/); more than twice the
    # longest routes.autoreply.interval of a route on this store.
    fleet_retention_days: _Days = 7

    @property
    def link_days(self) -> int:
        """``link_retention_days`` in force (its default is retention_days)."""
        return self.link_retention_days if self.link_retention_days is not None else self.retention_days


class FilesystemStorageSettings(_Retained):
    """Objects as files under a local directory (the embedded default).

    It has no URLs of its own: the link endpoint streams the file."""

    backend: Literal["filesystem"]
    path: str = "var/objects"


# -- shared pieces of the cloud backends --------------------------------------

MiB = 1024 * 1024
GiB = 1024 * MiB
# SigV4 presigned URLs, Azure user-delegation SAS and GCS V4 URLs all end at 7 days.
MAX_URL_TTL = 7 * 86400


_Size = Annotated[int, BeforeValidator(parse_size)]
_Seconds = Annotated[int, BeforeValidator(parse_duration)]
# How long a storage URL minted at click time stays valid.
UrlTtl = Annotated[int, BeforeValidator(parse_duration), Field(ge=1, le=MAX_URL_TTL)]


def _check_prefix(v: str) -> str:
    """A key prefix: "" or a relative path; a trailing "/" is added."""
    if v == "":
        return v
    parts = v.strip("/").split("/")
    if v.startswith("/") or any(p in ("", ".", "..") for p in parts) or re.search(r"[\x00-\x1f\x7f\\]", v):
        raise ValueError("expected \"\" or a relative key prefix such as \"attachments/\" "
                         "(no leading \"/\", no \".\" or \"..\" segments, no control characters)")
    return "/".join(parts) + "/"


def _check_url(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v):
        raise ValueError("expected an http:// or https:// URL, such as \"https://s3.example.com\"")
    return v.rstrip("/") if v else v


# -- S3 ---------------------------------------------------------------------------------


class S3StorageSettings(_Retained):
    """AWS S3 or an S3-compatible store (Ceph radosgw, MinIO) through boto3.

    Encryption at rest is always on: SSE-S3 (``"AES256"``) or SSE-KMS
    (``"aws:kms"``, with ``kms_key_id`` or the account's default key).  At
    start the bucket's region must equal ``region``.  With ``staging_bucket``
    or ``staging_prefix`` each object is uploaded to the staging location,
    verified, copied server-side to ``bucket``/``prefix`` and removed from
    staging.
    """

    backend: Literal["s3"]
    bucket: str
    # The region the bucket must be in (data residency); start-up refuses another.
    region: str
    prefix: str = ""
    # For S3-compatible stores; None means AWS's own endpoint for the region.
    endpoint_url: str | None = None
    # "path" for stores without virtual-host bucket names; "auto" lets boto3 choose.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Static keys; without them boto3's default chain is used (environment,
    # shared config, instance or task role).  The secret comes from a file or an
    # environment variable, never from this file.
    access_key_id: str | None = None
    secret_access_key_file: str | None = None
    secret_access_key_env: str | None = None
    # "AES256" (SSE-S3) or "aws:kms" (SSE-KMS); there is no way to turn it off.
    encryption: Literal["AES256", "aws:kms"] = "AES256"
    # The KMS key (id, ARN or alias) for "aws:kms"; None means the account's aws/s3 key.
    kms_key_id: str | None = None
    url_ttl: UrlTtl = 900
    # Part size of multipart uploads; smaller objects go up in one PutObject.
    multipart_chunk_size: Annotated[_Size, Field(ge=5 * MiB, le=5 * GiB)] = 8 * MiB
    # Parts of one multipart upload sent at the same time; about
    # part_concurrency x multipart_chunk_size bytes of it are in memory (plus
    # the buffer of the part being read, up to one part more).
    part_concurrency: int = Field(4, ge=1, le=64)
    # Attempts per request (timeouts, throttling, 5xx), with backoff (boto3 "standard" retries).
    max_attempts: int = Field(3, ge=1, le=10)
    connect_timeout: Annotated[_Seconds, Field(ge=1)] = 10
    read_timeout: Annotated[_Seconds, Field(ge=1)] = 60
    # Concurrent requests (threads and pooled connections) of this backend.
    max_connections: int = Field(10, ge=1, le=256)
    # Staging: either or both of these turn it on.  staging_bucket None means
    # the staging prefix is in ``bucket``.
    staging_bucket: str | None = None
    staging_prefix: str | None = None
    # Part size of the server-side multipart copy from staging to the secure location.
    copy_part_size: Annotated[_Size, Field(ge=5 * MiB, le=5 * GiB)] = 512 * MiB
    # recover() at start leaves staging objects younger than this alone: they
    # may belong to an upload still running in another gateway process.
    staging_grace: Annotated[_Seconds, Field(ge=0)] = 3600

    @field_validator("bucket", "staging_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", v):
            raise ValueError("expected an S3 bucket name: 3-63 lowercase letters, digits, \".\" or \"-\"")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", v):
            raise ValueError("expected a region name such as \"eu-central-1\"")
        return v

    @field_validator("encryption", mode="before")
    @classmethod
    def _encryption(cls, v: Any) -> Any:
        if v not in ("AES256", "aws:kms"):
            raise ValueError("encryption at rest cannot be turned off or changed to anything else: "
                             "expected \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS, with kms_key_id)")
        return v

    @field_validator("prefix", "staging_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        return v if v is None else _check_prefix(v)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return _check_url(v)

    @model_validator(mode="after")
    def _consistent(self) -> S3StorageSettings:
        if self.kms_key_id is not None and self.encryption != "aws:kms":
            raise ValueError("kms_key_id is set but encryption is not \"aws:kms\": "
                             "expected encryption = \"aws:kms\" or no kms_key_id")
        secrets = [x for x in (self.secret_access_key_file, self.secret_access_key_env) if x is not None]
        if self.access_key_id is not None and len(secrets) != 1:
            raise ValueError("access_key_id needs exactly one of \"secret_access_key_file\" or "
                             "\"secret_access_key_env\"")
        if self.access_key_id is None and secrets:
            raise ValueError("a secret access key is set without access_key_id")
        if self.part_concurrency > self.max_connections:
            raise ValueError(f"part_concurrency = {self.part_concurrency} is more than max_connections = "
                             f"{self.max_connections}: expected part_concurrency <= max_connections")
        if self.staging:
            if self.staging_bucket in (None, self.bucket):
                staging = self.staging_prefix or ""
                if staging.startswith(self.prefix) or self.prefix.startswith(staging):
                    raise ValueError(f"staging_prefix {staging!r} and prefix {self.prefix!r} overlap in bucket "
                                     f"{self.bucket!r}: expected two disjoint prefixes such as "
                                     "prefix = \"attachments/\" and staging_prefix = \"staging/\", "
                                     "or a staging_bucket")
        return self

    @property
    def staging(self) -> bool:
        """Whether uploads go through a staging location first."""
        return self.staging_bucket is not None or self.staging_prefix is not None


# -- Azure Blob -------------------------------------------------------------------------


class AzureStorageSettings(_Retained):
    """Azure Blob Storage through azure-storage-blob's async client.

    Credentials, in order: a connection string (file or environment variable);
    ``account_url`` with an account key (file or environment variable); or
    ``account_url`` alone, which uses azure-identity's DefaultAzureCredential
    (managed identity, workload identity, az login) and user-delegation SAS.
    """

    backend: Literal["azure"]
    # https://ACCOUNT.blob.core.windows.net (or Azurite's http://127.0.0.1:10000/devstoreaccount1).
    account_url: str | None = None
    account_key_file: str | None = None
    account_key_env: str | None = None
    connection_string_file: str | None = None
    connection_string_env: str | None = None
    container: str
    prefix: str = ""
    # An encryption scope of the account (customer-managed key); None means the
    # account's default encryption (Microsoft-managed keys).
    encryption_scope: str | None = None
    url_ttl: UrlTtl = 900
    # Blocks staged per upload (stage_block); an object is at most 50,000 blocks.
    block_size: Annotated[_Size, Field(ge=64 * 1024, le=4000 * MiB)] = 8 * MiB
    # Attempts per request (timeouts, 5xx) with exponential backoff.
    max_attempts: int = Field(3, ge=1, le=10)
    connect_timeout: Annotated[_Seconds, Field(ge=1)] = 10
    read_timeout: Annotated[_Seconds, Field(ge=1)] = 60
    # A PEM CA bundle to trust for account_url (a private endpoint behind an
    # internal CA); None means the system's trust store.
    ca_file: str | None = None

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", v):
            raise ValueError("expected a container name: 3-63 lowercase letters, digits and single \"-\"")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return _check_prefix(v)

    @field_validator("account_url")
    @classmethod
    def _account_url(cls, v: str | None) -> str | None:
        return _check_url(v)

    @model_validator(mode="after")
    def _credentials(self) -> AzureStorageSettings:
        conn = [x for x in (self.connection_string_file, self.connection_string_env) if x is not None]
        key = [x for x in (self.account_key_file, self.account_key_env) if x is not None]
        if len(conn) > 1 or len(key) > 1:
            raise ValueError("expected at most one of connection_string_file/connection_string_env and "
                             "at most one of account_key_file/account_key_env")
        if conn and (self.account_url is not None or key):
            raise ValueError("a connection string already names the account and its key: "
                             "expected no account_url or account_key_* beside it")
        if not conn and self.account_url is None:
            raise ValueError("expected account_url (https://ACCOUNT.blob.core.windows.net) or a "
                             "connection_string_file / connection_string_env")
        return self


# -- Google Cloud Storage ---------------------------------------------------------------


class GcsStorageSettings(_Retained):
    """Google Cloud Storage through google-cloud-storage.

    Credentials come from ``credentials_file`` (a service-account key, which
    also signs V4 URLs offline) or Application Default Credentials (which sign
    through the IAM signBlob API when they hold no key).
    """

    backend: Literal["gcs"]
    bucket: str
    prefix: str = ""
    project: str | None = None
    credentials_file: str | None = None
    # CMEK: projects/P/locations/L/keyRings/R/cryptoKeys/K; None means Google-managed keys.
    kms_key_name: str | None = None
    # When set, start-up refuses a bucket in another location (e.g. "EUROPE-WEST3").
    location: str | None = None
    url_ttl: UrlTtl = 900
    # Resumable uploads send the object in pieces of this size (a multiple of 256 KiB).
    upload_chunk_size: Annotated[_Size, Field(ge=256 * 1024, le=1 * GiB)] = 8 * MiB
    # Seconds before one request is given up on; transient failures are
    # retried with backoff for at most twice this in all.
    timeout: Annotated[_Seconds, Field(ge=1)] = 60
    # Another endpoint (an emulator, Private Service Connect); None means Google's.
    endpoint_url: str | None = None
    # Emulators only: call the API without credentials (URLs are still signed
    # with credentials_file when it is given).
    anonymous: bool = False

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", v):
            raise ValueError("expected a bucket name: 3-222 lowercase letters, digits, \".\", \"_\" or \"-\"")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return _check_prefix(v)

    @field_validator("kms_key_name")
    @classmethod
    def _kms(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+", v):
            raise ValueError("expected a key name such as "
                             "\"projects/P/locations/L/keyRings/R/cryptoKeys/K\"")
        return v

    @field_validator("upload_chunk_size")
    @classmethod
    def _chunk(cls, v: int) -> int:
        if v % (256 * 1024):
            raise ValueError("expected a multiple of 256 KiB (262144 bytes), such as \"8MiB\"")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return _check_url(v)

StorageSettings = Annotated[
    FilesystemStorageSettings | S3StorageSettings | AzureStorageSettings | GcsStorageSettings,
    Field(discriminator="backend"),
]

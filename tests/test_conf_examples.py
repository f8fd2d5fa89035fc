"""The example configs in conf/ pass check-config and carry the platform
limits, and docs/CONFIG.md documents exactly the keys each storage backend
accepts."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_smtp_next_hop
from gateway.storage.settings import (
    AzureStorageSettings,
    FilesystemStorageSettings,
    GcsStorageSettings,
    S3StorageSettings,
)
from tests.certs import self_signed
from tests.harness import GATEWAY, ROOT


def recipe_environment(name: str) -> dict[str, str]:
    """The environment variables the platform's recipe tells the
    administrator to set (its ``/etc/attachment-gateway/environment``
    block), each with a value long enough for any secret."""
    doc = (ROOT / "docs" / "integrations" / f"{name}.md").read_text()
    m = re.search(r"```sh\n(# /etc/attachment-gateway/environment\n.*?)```", doc, re.S)
    assert m, f"docs/integrations/{name}.md has no environment block"
    names = re.findall(r"^([A-Z][A-Z0-9_]*)=", m.group(1), re.M)
    assert names
    return {n: f"{n.lower()}-0123456789abcdef" for n in names}


def check_config(path: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``attachment-gateway check-config`` with ``env`` and nothing else of
    the gateway's (no GATEWAY_* or cloud credentials from this machine)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_", "ATTACHMENT_GATEWAY_"))}
    return subprocess.run([*GATEWAY, "-c", str(path), "check-config"], capture_output=True, text=True, cwd=cwd,
                          env={**base, **env, "PYTHONPATH": str(ROOT)}, timeout=60)


@pytest.mark.parametrize("name", ["genesys", "cxone"])
def test_platform_configs_validate_with_the_recipes_environment_and_carry_the_platform_limits(
        name: str, tmp_path: Path) -> None:
    path = ROOT / "conf" / f"{name}.toml"
    # The DKIM/ARC key and the STARTTLS certificate as the recipe makes
    # them, where the config names them (relative to the working directory).
    keygen = subprocess.run([*GATEWAY, "dkim", "keygen", "--domain", "mx-gateway.example.com",
                             "--selector", "gw1", "--out", str(tmp_path / "dkim")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert keygen.returncode == 0, keygen.stderr
    cert, key = self_signed(tmp_path / "tls", cn="mx-gateway.example.com")
    cert.rename(tmp_path / "tls" / "mx-gateway.crt")
    key.rename(tmp_path / "tls" / "mx-gateway.key")

    env = recipe_environment(name)
    out = check_config(path, tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr, out.stderr
    text = path.read_text()
    raw = tomllib.loads(text)
    # Every secret the config reads from the environment is one the recipe
    # lists, and each is needed: without it check-config names it.
    assert set(re.findall(r'env = "([A-Z0-9_]+)"', text)) == {n for n in env if not n.startswith("AWS_")}
    for missing in env:
        if missing.startswith("AWS_"):
            continue  # the bucket's credentials: or the host's role; the store checks them at serve
        bad = check_config(path, tmp_path, {k: v for k, v in env.items() if k != missing})
        assert bad.returncode == 78 and f"environment variable {missing} is not set" in bad.stderr, bad.stderr

    [route] = raw["routes"]
    # SES: 40 MB per message as sent, base64 included; TLS to it required.
    assert route["next_hop_max_size"] == "40MB" and route["tls"] == "required"
    assert route.get("max_attachments") == (50 if name == "genesys" else None)
    # The platform's inbound mail domain, by its MX records (not a bracketed host).
    host, port, lookup_mx = parse_smtp_next_hop(route["next_hop"])
    assert lookup_mx and port == 25 and "[" not in route["next_hop"]
    # Signed, sealed and SRS-rewritten: SES sees SPF and DKIM pass (issue 21).
    assert route["srs"] is True and raw["auth"]["dkim"] and raw["auth"]["arc"] and raw["srs"]["domain"]
    # The customer is told (automatic reply), and DSNs leave through the
    # outbound relay: nothing is left in a local folder.
    assert route["autoreply"]["next_hop"].startswith("smtp://[")
    assert raw["delivery"]["bounce_next_hop"].startswith("smtp://[")
    assert "maildir:" not in text
    assert raw["smtp"]["tls_cert_file"] and raw["agents"]["auth"] == "trusted-header"
    assert raw["http"]["base_url"].startswith("https://") and raw["http"]["trusted_proxies"]


def test_the_demo_config_validates(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(ROOT / "conf" / "gateway.toml"), "check-config"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=60)
    assert out.returncode == 0, out.stderr


BACKENDS = {"filesystem": FilesystemStorageSettings, "s3": S3StorageSettings, "azure": AzureStorageSettings,
            "gcs": GcsStorageSettings}


@pytest.mark.parametrize("name, backend", [("s3", "s3"), ("azure", "azure"), ("gcs", "gcs")])
def test_cloud_example_passes_check_config(name: str, backend: str, tmp_path: Path) -> None:
    path = ROOT / "conf" / f"{name}.toml"
    raw = tomllib.loads(path.read_text())
    assert [s["backend"] for s in raw["storage"].values()] == [backend]
    assert all(r["storage"] in raw["storage"] for r in raw["routes"])
    res = subprocess.run([*GATEWAY, "-c", str(path), "check-config"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60,
                         env={**os.environ, "ATTACHMENT_GATEWAY_LINK_KEY": "an-example-link-key-0123456789"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{path}: OK (1 route(s), 1 store(s))"
    # Each example is commented: the file says what it is for.
    assert path.read_text().startswith("# attachment-gateway: attachments in ")


def test_an_example_without_its_link_key_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATTACHMENT_GATEWAY_LINK_KEY"}
    res = subprocess.run([*GATEWAY, "-c", str(ROOT / "conf" / "s3.toml"), "check-config"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60, env=env)
    assert res.returncode == 78 and "ATTACHMENT_GATEWAY_LINK_KEY is not set" in res.stderr


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_config_doc_lists_every_key_of_each_backend(backend: str) -> None:
    doc = (ROOT / "docs" / "CONFIG.md").read_text()
    m = re.search(rf'### `backend = "{backend}"`\n(.*?)(?=\n### |\n## )', doc, re.S)
    assert m, f"docs/CONFIG.md has no section for backend {backend}"
    documented = set()
    for row in re.findall(r"^\| `([^|]+)` \|", m.group(1), re.M):
        documented.update(k.strip("` ") for k in row.split("/"))
    assert documented == set(BACKENDS[backend].model_fields) - {"backend"}

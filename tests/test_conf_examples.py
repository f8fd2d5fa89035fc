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

from gateway.storage.settings import (AzureStorageSettings, FilesystemStorageSettings, GcsStorageSettings,
                                      S3StorageSettings)
from tests.harness import GATEWAY, ROOT

SECRETS = {"GATEWAY_LINK_KEY": "link-key-0123456789abcdef", "GATEWAY_API_KEY_GENESYS": "genesys-key-0123456789",
           "GATEWAY_API_KEY_CXONE": "cxone-key-0123456789ab", "GATEWAY_SRS_SECRET": "srs-secret-0123456789abcdef"}


@pytest.mark.parametrize("name", ["genesys", "cxone"])
def test_platform_configs_validate_and_stay_under_the_40_mb_ses_limit(name: str, tmp_path: Path) -> None:
    path = ROOT / "conf" / f"{name}.toml"
    # The DKIM/ARC key as the recipe makes it, where the config names it
    # (relative to the working directory).
    keygen = subprocess.run([sys.executable, "-m", "gateway", "dkim", "keygen", "--domain", "mx-gateway.example.com",
                             "--selector", "gw1", "--out", str(tmp_path / "dkim")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert keygen.returncode == 0, keygen.stderr
    out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(path), "check-config"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, **SECRETS, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    [route] = tomllib.loads(path.read_text())["routes"]
    assert route["next_hop_max_size"] == "40MB" and route["tls"] == "required"
    # Signed, sealed and SRS-rewritten: SES sees SPF and DKIM pass (issue 21), and no warning says otherwise.
    raw = tomllib.loads(path.read_text())
    assert route["srs"] is True and raw["auth"]["dkim"] and raw["auth"]["arc"] and raw["srs"]["domain"]
    assert raw["delivery"]["bounce_next_hop"].startswith("smtp://")
    assert "warning" not in out.stderr, out.stderr
    # Without the API key in the environment, check-config names it.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    bad = subprocess.run([sys.executable, "-m", "gateway", "-c", str(path), "check-config"], capture_output=True,
                         text=True, cwd=tmp_path, env={**env, "GATEWAY_LINK_KEY": SECRETS["GATEWAY_LINK_KEY"],
                                                       "GATEWAY_SRS_SECRET": SECRETS["GATEWAY_SRS_SECRET"],
                                                       "PYTHONPATH": str(ROOT)}, timeout=60)
    assert bad.returncode == 78 and f"api.keys[{name}]: environment variable" in bad.stderr, bad.stderr


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

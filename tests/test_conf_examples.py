"""The example configs in conf/ pass check-config, and carry the platform limits."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.harness import ROOT

SECRETS = {"GATEWAY_LINK_KEY": "link-key-0123456789abcdef", "GATEWAY_API_KEY_GENESYS": "genesys-key-0123456789",
           "GATEWAY_API_KEY_CXONE": "cxone-key-0123456789ab"}


@pytest.mark.parametrize("name", ["genesys", "cxone"])
def test_platform_configs_validate_and_stay_under_the_40_mb_ses_limit(name: str, tmp_path: Path) -> None:
    path = ROOT / "conf" / f"{name}.toml"
    out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(path), "check-config"], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, **SECRETS, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    [route] = tomllib.loads(path.read_text())["routes"]
    assert route["next_hop_max_size"] == "40MB" and route["tls"] == "required"
    # Without the API key in the environment, check-config names it.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    bad = subprocess.run([sys.executable, "-m", "gateway", "-c", str(path), "check-config"], capture_output=True,
                         text=True, cwd=tmp_path, env={**env, "GATEWAY_LINK_KEY": SECRETS["GATEWAY_LINK_KEY"],
                                                       "PYTHONPATH": str(ROOT)}, timeout=60)
    assert bad.returncode == 78 and f"api.keys[{name}]: environment variable" in bad.stderr, bad.stderr


def test_the_demo_config_validates(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "-c", str(ROOT / "conf" / "gateway.toml"), "check-config"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=60)
    assert out.returncode == 0, out.stderr

"""Errors at check time: what ``check-config`` finds without the network
(directories the gateway writes, the stores' SDKs, certificate and key),
``serve`` refusing the same before it listens, both with exit 78 and one
line naming the key, never a traceback; ``init DIR`` and the package's
metadata (LICENSE, version, py.typed, example files in the wheel)."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.certs import self_signed
from tests.harness import GATEWAY, ROOT, GatewayProcess
from tests.servers.ports import port_is_open


def _cli(*args: str, cwd: Path, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(str(p) for p in [*pythonpath, ROOT])
    return subprocess.run([*GATEWAY, *args], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={**os.environ, "PYTHONPATH": path})


def _config(tmp: Path, **sections: Any) -> GatewayProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return GatewayProcess(tmp, sections=sections)


def _refused(gw: GatewayProcess, *lines: str, pythonpath: list[Path] = (),
             commands: tuple[tuple[str, ...], ...] = (("check-config",), ("serve",),
                                                       ("serve", "--processes", "2"))) -> None:
    """Each command exits 78 with ``lines`` on stderr, no traceback, no port open."""
    for command in commands:
        r = _cli("-c", str(gw.config_path), *command, cwd=gw.tmp, pythonpath=pythonpath)
        assert r.returncode == 78, (command, r.returncode, r.stderr)
        for line in lines:
            assert line in r.stderr, (command, line, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == "", (command, r.stderr)
        assert not port_is_open("127.0.0.1", gw.smtp_port) and not port_is_open("127.0.0.1", gw.http_port)


def test_directories_that_cannot_be_created_are_found_before_serve(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    gw = _config(tmp_path / "gw", **{"storage.local": {"backend": "filesystem", "path": str(blocker / "objects")},
                                     "gateway": {"spool_dir": str(blocker / "spool")}})
    _refused(gw, f"storage.local.path: '{blocker}/objects': cannot be created: {blocker} is not a directory",
             f"gateway.spool_dir: '{blocker}/spool': cannot be created: {blocker} is not a directory")
    # The same config with the paths fixed passes: the check is about the paths.
    gw = _config(tmp_path / "ok", **{"storage.local": {"backend": "filesystem", "path": str(tmp_path / "o")}})
    r = _cli("-c", str(gw.config_path), "check-config", cwd=gw.tmp)
    assert r.returncode == 0, r.stderr


def test_trusted_header_mode_refuses_proxies_that_trust_every_address(tmp_path: Path) -> None:
    for net in ("0.0.0.0/0", "::/0"):
        gw = _config(tmp_path / net.replace("/", "_").replace(":", "_"),
                     http={"trusted_proxies": ["127.0.0.2/32", net]},
                     agents={"auth": "trusted-header"}, authorization={"mode": "allow-all"})
        _refused(gw, f"http.trusted_proxies: '{net}' trusts every address, so any client could set "
                     f"X-Forwarded-User", commands=(("check-config",), ("serve",)))


def test_a_store_without_its_sdk_names_the_pip_line(tmp_path: Path) -> None:
    # An environment without the extras: a plain module named like the
    # SDKs' top-level packages hides them, as if they were not installed.
    hidden = tmp_path / "without-extras"
    hidden.mkdir()
    (hidden / "azure.py").write_text("")
    (hidden / "google.py").write_text("")
    gw = _config(tmp_path / "gw", **{
        "storage.blobs": {"backend": "azure", "account_url": "https://acct.blob.core.windows.net",
                          "container": "attachments"},
        "storage.gcs": {"backend": "gcs", "bucket": "attachments"},
        "storage.local": {"backend": "filesystem", "path": str(tmp_path / "objects")}})
    r = _cli("-c", str(gw.config_path), "check-config", cwd=gw.tmp)
    assert r.returncode == 0, r.stderr  # with the SDKs installed the config is fine
    _refused(gw, "storage.blobs.backend: 'azure' needs azure.storage.blob, azure.identity, which cannot be "
                 f"imported; install it with: {sys.executable} -m pip install 'attachment-gateway[azure]'",
             f"storage.gcs.backend: 'gcs' needs google.cloud.storage, google.auth, which cannot be imported; "
             f"install it with: {sys.executable} -m pip install 'attachment-gateway[gcs]'",
             pythonpath=[hidden], commands=(("check-config",), ("serve",), ("storage", "check"),
                                            ("storage", "check", "--store", "local")))


def test_certificate_and_key_must_be_pems_that_match(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "one")
    _, other_key = self_signed(tmp_path / "two")
    gw = _config(tmp_path / "gw", smtp={"tls_cert_file": str(cert), "tls_key_file": str(other_key)})
    _refused(gw, f"smtp.tls_key_file: '{other_key}': is not the private key of smtp.tls_cert_file '{cert}'")
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    gw = _config(tmp_path / "gw2", smtp={"tls_cert_file": str(tmp_path / "garbage.pem"), "tls_key_file": str(key)})
    _refused(gw, f"smtp.tls_cert_file: '{tmp_path}/garbage.pem': expected a readable PEM certificate",
             commands=(("check-config",),))
    gw = _config(tmp_path / "gw3", smtp={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    r = _cli("-c", str(gw.config_path), "check-config", cwd=gw.tmp)
    assert r.returncode == 0, r.stderr


def test_a_backend_in_capitals_names_the_key_and_echoes_nothing_else(tmp_path: Path) -> None:
    gw = _config(tmp_path / "gw", **{"storage.local": {"backend": "S3", "bucket": "private-bucket-name",
                                                       "access_key_id": "AKIAEXAMPLEKEYID"}})
    r = _cli("-c", str(gw.config_path), "check-config", cwd=gw.tmp)
    assert r.returncode == 78
    assert "storage.local.backend: 'S3': expected one of \"filesystem\", \"s3\", \"azure\", \"gcs\" " \
           "(backend names are lower case: 's3')" in r.stderr, r.stderr
    assert "private-bucket-name" not in r.stderr and "AKIAEXAMPLEKEYID" not in r.stderr


def test_branding_files_and_colours_are_checked_naming_the_key(tmp_path: Path) -> None:
    # A logo that is not an image: refused by check-config and by serve, before any port listens.
    (tmp_path / "logo.png").write_text("not an image")
    gw = _config(tmp_path / "gw", branding={"logo": str(tmp_path / "logo.png")})
    _refused(gw, f"branding.logo: '{tmp_path / 'logo.png'}': expected a PNG, JPEG or SVG file",
             commands=(("check-config",), ("serve",)))
    gw = _config(tmp_path / "gw2", branding={"colours": {"accent": "#f0e68c"}})
    _refused(gw, "branding.colours.accent: '#f0e68c': contrast 1.3:1 with #ffffff is too low to read",
             commands=(("check-config",),))
    gw = _config(tmp_path / "gw3", branding={"logo": "https://cdn.example/logo.png"})
    _refused(gw, "branding.logo: 'https://cdn.example/logo.png': expected a file", commands=(("check-config",),))


def test_init_writes_the_example_configs_and_units(tmp_path: Path) -> None:
    r = _cli("init", str(tmp_path / "site"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for kind, suffix in (("conf", ".toml"), ("systemd", ".service")):
        shipped = sorted(p.name for p in (ROOT / kind).iterdir() if p.name.endswith(suffix))
        assert shipped and sorted(p.name for p in (tmp_path / "site" / kind).iterdir()) == shipped
        for name in shipped:
            assert (tmp_path / "site" / kind / name).read_bytes() == (ROOT / kind / name).read_bytes()
    edited = tmp_path / "site" / "conf" / "gateway.toml"
    edited.write_text(edited.read_text().replace("gateway.localhost", "mx.example.com"))
    r = _cli("init", str(tmp_path / "site"), cwd=tmp_path)
    assert r.returncode == 0 and f"kept  {edited}" in r.stdout and "mx.example.com" in edited.read_text()
    r = _cli("-c", str(edited), "--base-dir", str(tmp_path / "run"), "check-config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_the_wheel_carries_license_version_types_and_examples(tmp_path: Path) -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["license"] == "Apache-2.0"
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert cfg["metadata"]["version"] == "attr: gateway.__version__"
    r = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                        "egg_info", "--egg-base", str(tmp_path), "build", "--build-base", str(tmp_path / "build")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    [info] = tmp_path.glob("*.egg-info")
    pkg_info = (info / "PKG-INFO").read_text()
    from gateway import __version__

    assert f"\nVersion: {__version__}\n" in pkg_info
    assert "Classifier: License :: OSI Approved :: Apache Software License" in pkg_info
    assert "Classifier: Typing :: Typed" in pkg_info and "Project-URL: Source, https://" in pkg_info
    lib = tmp_path / "build" / "lib" / "gateway"
    assert (lib / "py.typed").is_file()
    for kind in ("conf", "systemd"):
        for p in (ROOT / kind).iterdir():
            built = lib / "examples" / kind / p.name
            assert built.is_file() and not built.is_symlink() and built.read_bytes() == p.read_bytes(), p
    r = _cli("--version", cwd=tmp_path)
    assert r.stdout.strip() == f"attachment-gateway {__version__}"


def test_a_store_name_a_link_token_cannot_carry_is_refused(tmp_path: Path) -> None:
    """A store named "eu.files" (or longer than 32 characters) was
    accepted, and every link to it answered 403 "malformed token": the
    name is a field of the token, between dots."""
    for name in ("eu.files", "s" * 33):
        (tmp_path / name[:8]).mkdir()
        gw = GatewayProcess(tmp_path / name[:8], route={"storage": name}, sections={
            f'storage."{name}"': {"backend": "filesystem", "path": str(tmp_path / "o")}})
        _refused(gw, f"storage.{name}: a store's name is written in its links: expected 1 to 32 letters, "
                     f"digits, '_' or '-'", commands=(("check-config",), ("serve",)))

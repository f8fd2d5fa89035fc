"""Uploads obey the route's policies: a refusing verdict removes the staged
file and stores nothing (the API answers it with 415).

In-process, over a real filesystem store and the real config loader; the one
stand-in is the policy itself (policies are pluggable by design, and the
refusal policies arrive with issue 5).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import policies
import pytest
from gateway import config
from gateway.links.tokens import Keyring
from gateway.storage.filesystem import FilesystemStorage
from gateway.uploads import Refused, Uploads

CONFIG = """
[links]
keys = [{ id = "k1", file = "link.key", create_missing = true }]
[storage.local]
backend = "filesystem"
path = "objects"
[[routes]]
name = "contact"
domains = ["contact.example"]
next_hop = "maildir:outbox"
storage = "local"
"""


class RefuseExecutables:
    """A pure policy: refuses what starts like a Windows program."""

    name = "refuse_exe"

    def decide(self, part: policies.PartFacts) -> policies.Decision | None:
        if part.filename.endswith(".exe") or part.declared_type == "application/x-msdownload":
            return policies.Decision(policies.Action.REPLACE, self.name, "programs are not accepted")
        return None


async def _body(data: bytes):
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


@pytest.mark.parametrize("filename,refused", [("setup.exe", True), ("invoice.pdf", False)])
def test_a_refusing_decision_stores_nothing_and_a_keeping_one_stores_the_file(tmp_path: Path, filename: str,
                                                                               refused: bool) -> None:
    (tmp_path / "gw.toml").write_text(CONFIG)
    cfg = config.load(tmp_path / "gw.toml", base_dir=str(tmp_path))

    async def run() -> None:
        store = FilesystemStorage("local", cfg.storage["local"], tmp_path)
        await store.start()
        uploads = Uploads(cfg, {"local": store}, Keyring(cfg.links.keys, tmp_path))
        uploads.policies["contact"] = [RefuseExecutables(), *uploads.policies["contact"]]
        data = b"MZ" + bytes(5000)
        staged = await uploads.stage(store, "staging/api/j1", _body(data), limit=1 << 20)
        assert (staged.size, staged.head[:2]) == (len(data), b"MZ")
        if refused:
            with pytest.raises(Refused, match="programs are not accepted"):
                await uploads.finish(staging=[staged.key], filename=filename, customer="c", ctype="application/octet-stream",
                                     size=staged.size, sha256=staged.sha256, head=staged.head, reference="j1")
            assert not (tmp_path / "objects" / "uploads").exists()
        else:
            stored = await uploads.finish(staging=[staged.key], filename=filename, customer="c",
                                          ctype="application/pdf", size=staged.size, sha256=staged.sha256,
                                          head=staged.head, reference="j1")
            assert (tmp_path / "objects" / stored.key).read_bytes() == data
        assert await store.stat("staging/api/j1") is None

    asyncio.run(run())

#!/usr/bin/env bash
# Install what the storage tests' real servers need (tests/servers/ceph.py,
# azurite.py, gcs.py). Idempotent: Debian packages already installed and an
# Azurite already at the pinned version are left alone; `apt-get update` runs
# once, only when a package is missing.
#
# Usage (as root):  scripts/install-storage-deps.sh
#
# What it installs:
#   radosgw ceph-mon ceph-osd   a one-node Ceph cluster whose radosgw is the S3
#                               server (Debian 12: Ceph 16.2); ceph-common and
#                               ceph-base come with them (ceph, radosgw-admin,
#                               ceph-authtool, monmaptool)
#   azurite (npm)               the Azure Blob emulator, into the project-local
#                               tests/servers/node/ (npm ci from its lock file)
#   oidc-provider (npm)         a real OpenID Connect provider for the agent
#                               sign-in tests (tests/servers/oidc.py), same place
#   playwright-core (npm)       drives Debian's chromium in the page tests
#   axe-core (npm)              the accessibility checks of every page, run in
#                               that chromium (tests/browser/pages.cjs)
#
# The Python packages (SDKs, gcp-storage-emulator) are in setup.cfg's [test] extra:
#   .venv/bin/pip install -e ".[test]"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_DIR="$ROOT/tests/servers/node"
PACKAGES=(radosgw ceph-mon ceph-osd)

die() { echo "install-storage-deps: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu only"

# -- Debian packages -----------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-storage-deps: Debian packages present: ${PACKAGES[*]}"
else
    echo "install-storage-deps: installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
fi
for exe in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool; do
    command -v "$exe" >/dev/null 2>&1 || die "$exe is missing after install"
done

# -- Azurite (npm, project-local) ------------------------------------------------
command -v node >/dev/null 2>&1 || die "node not found: Azurite needs Node.js 20 or later"
command -v npm >/dev/null 2>&1 || die "npm not found"
# Every package in package.json at its pinned version, or npm ci again.
stale="$(cd "$NODE_DIR" && node -e "
const deps = require('./package.json').dependencies;
const out = [];
for (const [name, want] of Object.entries(deps)) {
  let have = '';
  try { have = require('./node_modules/' + name + '/package.json').version; } catch (e) {}
  if (have !== want) out.push(name + '@' + want);
}
console.log(out.join(' '));")"
if [ -z "$stale" ] && [ -x "$NODE_DIR/node_modules/.bin/azurite-blob" ]; then
    echo "install-storage-deps: node packages present in tests/servers/node"
else
    echo "install-storage-deps: installing ${stale:-azurite} into tests/servers/node"
    # Azurite 3.37 declares Node >= 22 but runs the Blob service on Node 20
    # (tested); the engine check only warns.
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $NODE_DIR"
fi
[ -x "$NODE_DIR/node_modules/.bin/azurite-blob" ] || die "azurite-blob is missing after npm ci"
for pkg in oidc-provider playwright-core; do
    [ -f "$NODE_DIR/node_modules/$pkg/package.json" ] || die "$pkg is missing after npm ci"
done
echo "install-storage-deps: ok"

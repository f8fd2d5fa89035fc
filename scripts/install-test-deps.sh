#!/usr/bin/env bash
# Install the Debian packages that the tests (tests/servers) and the benchmark
# harness (bench/) need. Idempotent: packages already installed are left alone,
# and `apt-get update` runs once, only when something is missing.
#
# Usage (as root):  scripts/install-test-deps.sh
#
# What each package is for:
#   postfix     throwaway Postfix instances (tests/servers/postfix.py), and its
#               smtp-source / smtp-sink load generator and sink
#   swaks       hand-made SMTP sessions (TLS, attachments) in tests
#   wrk         HTTP load for the link / upload endpoints
#   bsdutils    `script`, to capture `postfix check` output (silent without a tty)
#   procps      ps/pgrep for debugging leftover daemons
#   ca-certificates  TLS clients in tests
#   rsyslog     the syslog receiver the audit tests send RFC 5424 to (tests/servers/rsyslog.py)
#   rsyslog-gnutls  its TLS driver, for syslog over TLS (RFC 5425)
#   openssl     `openssl s_client -starttls smtp` against the gateway's STARTTLS
#   libnet-ssleay-perl  swaks --tls
#   systemd     systemd-analyze verify for the units in systemd/
#   util-linux  mount, for the full-spool test (a small tmpfs)
#   chromium    the real browser the upload page is tested in (driven by npm
#               playwright-core from tests/servers/node, installed by
#               install-storage-deps.sh; a browser download by a tool fails here)
#   curl        HTTP requests with Expect: 100-continue in the upload API tests
#   mimedefang  the bench's Postfix+MIMEDefang baseline (make bench)
#   libnet-dns-perl  Net::DNS, which mimedefang.pl loads at start but Debian's
#               mimedefang does not declare: without it every MIMEDefang worker
#               dies at start and Postfix answers each message 451
#   clamav-daemon    clamd, started by tests/servers/clamd.py with a signature
#                    database the test writes (no signature download)
#   libmagic1        python-magic's library (type detection; usually present)
#   opendkim opendkim-tools  the checking next hop's DKIM verifier (a milter in
#                    tests/servers/checking_hop.py) and its key tools
#   postfix-policyd-spf-python  the checking next hop's SPF check (policy service)
#   qpdf             `qpdf --check`, the reference reader every disarmed PDF must pass
#   nginx-light      the reverse proxy in front of the agents' links (TLS, identity
#                    header), run by tests/servers/nginx.py as a foreground process
set -euo pipefail

PACKAGES=(postfix swaks wrk bsdutils procps ca-certificates openssl libnet-ssleay-perl systemd util-linux
          mimedefang libnet-dns-perl clamav-daemon libmagic1 rsyslog rsyslog-gnutls chromium curl
          opendkim opendkim-tools postfix-policyd-spf-python qpdf nginx-light)

die() { echo "install-test-deps: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script supports Debian/Ubuntu only"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found"

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: all present: ${PACKAGES[*]}"
else
    echo "install-test-deps: installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Postfix asks debconf questions on install; answer them up front so the
    # install never blocks. Tests never use the system instance.
    if command -v debconf-set-selections >/dev/null 2>&1; then
        printf '%s\n' \
            "postfix postfix/main_mailer_type select No configuration" \
            "postfix postfix/mailname string localhost" \
            | debconf-set-selections || die "debconf-set-selections failed"
    fi
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
fi

# Verify the executables the tests and bench actually call.
for exe in /usr/sbin/postfix /usr/sbin/postconf /usr/sbin/smtp-source /usr/sbin/smtp-sink \
           /usr/bin/swaks /usr/bin/wrk /usr/bin/script /usr/bin/openssl /usr/bin/systemd-analyze /usr/bin/mount \
           /usr/sbin/clamd /usr/sbin/rsyslogd /usr/bin/chromium /usr/bin/curl \
           /usr/sbin/opendkim /usr/bin/policyd-spf /usr/bin/qpdf /usr/sbin/nginx; do
    [ -x "$exe" ] || die "$exe is missing after install"
done
# MIMEDefang's workers are mimedefang.pl: it must compile with the modules installed.
perl -c /usr/bin/mimedefang.pl >/dev/null 2>&1 \
    || die "/usr/bin/mimedefang.pl does not compile: $(perl -c /usr/bin/mimedefang.pl 2>&1 | head -1)"
getent passwd postfix >/dev/null || die "user 'postfix' missing (postfix package not configured?)"
getent group postdrop >/dev/null || die "group 'postdrop' missing (postfix package not configured?)"
getent passwd nobody >/dev/null || die "user 'nobody' missing (smtp-sink runs as nobody under root)"
echo "install-test-deps: ok"

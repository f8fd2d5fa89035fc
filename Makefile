# attachment-gateway: the two commands (make run, make test) and friends.
# Everything installs into .venv; `make test` also installs, as root, the
# Debian packages and servers the tests talk to.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
GW     := $(VENV)/bin/attachment-gateway
CONFIG ?= conf/gateway.toml

.PHONY: run test test-fast test-deps lint bench demo check-config screenshots clean venv venv-test

# Two installs: what running needs (`make run`, `make demo`: the package and
# its dependencies), and on top of it the test extra (`make test`: pytest,
# ruff, mypy and the storage clients the tests drive).
$(VENV)/.installed-run: setup.cfg pyproject.toml
	@echo "Installing attachment-gateway into $(VENV) (pip install -e .) ..."
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run
	@echo "Installing the test tools into $(VENV) (pip install -e '.[test]') ..."
	$(PIP) install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed-run
venv-test: $(VENV)/.installed-test

## make run: install what running needs, then start the gateway on the embedded default.
run: venv
	@$(GW) -c $(CONFIG) check-config
	@echo ""
	@echo "  attachment-gateway is starting with $(CONFIG)"
	@echo "  Send mail to any address @contact.example via SMTP 127.0.0.1:2525: make demo"
	@echo "  (in another shell) sends a 12 MiB PDF and a PNG, opens the link, then shows a"
	@echo "  deferral; README.md's tour has the same with swaks."
	@echo "  Forwarded mail lands in the Maildir var/outbox/new/; attachments in var/objects/;"
	@echo "  mail @platform.contact.example goes over SMTP to 127.0.0.1:2526 (waits in"
	@echo "  var/spool/deferred until something listens there); links are served on"
	@echo "  http://127.0.0.1:8025/a/<token>; audit events in var/log/audit.jsonl."
	@echo "  Stop with Ctrl-C."
	@echo ""
	$(GW) -c $(CONFIG) serve

## make test: install everything the tests need, lint, then run the whole
## suite: the fast layer first (in-process, seconds; stops at the first
## failure), then the tests against real servers.
test: venv-test test-deps lint
	$(PY) -m pytest -q -p no:cacheprovider -x tests/unit
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 --ignore=tests/unit

## make test-fast: only the fast layer (policies, parser, rewriter, pipeline in-process).
test-fast: venv-test
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

## make lint: ruff and mypy, as configured in pyproject.toml; both must be clean.
lint: venv-test
	$(VENV)/bin/ruff check gateway policies bench scripts
	$(VENV)/bin/mypy gateway policies bench scripts

test-deps:
	@if [ "$$(id -u)" = "0" ]; then scripts/install-test-deps.sh && scripts/install-storage-deps.sh; \
	else sudo scripts/install-test-deps.sh && sudo scripts/install-storage-deps.sh; fi

## make bench: the benchmark, each figure beside baselines measured in the same run.
bench: venv-test test-deps
	$(PY) bench/run.py $(BENCH_ARGS)

## make demo: the README's tour against a running gateway (make run): a 12 MiB PDF
## becomes a link that works, then a message waits in deferred until its next hop is back.
demo: venv
	$(PY) scripts/demo.py -c $(CONFIG)

check-config: venv
	$(GW) -c $(CONFIG) check-config

## make screenshots: the pages in Chromium (tests/test_pages.py, which saves
## them in tests/artifacts/), copied into docs/images/ for the README and docs.
SHOTS := upload-empty upload-uploading upload-done upload-refused agent-expired agent-landing
screenshots: venv-test test-deps
	$(PY) -m pytest -q -p no:cacheprovider tests/test_pages.py
	mkdir -p docs/images
	for n in $(SHOTS); do cp tests/artifacts/pages-$$n.png docs/images/$$n.png; done

clean:
	rm -rf $(VENV) var build *.egg-info

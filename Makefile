# attachment-gateway: the two commands (make run, make test) and friends.
# Everything installs into .venv; `make test` also installs, as root, the
# Debian packages and servers the tests talk to.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
GW     := $(VENV)/bin/attachment-gateway
CONFIG ?= conf/gateway.toml

.PHONY: run test test-fast test-deps lint bench demo check-config clean venv

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## make run: install, then start the gateway on the embedded default.
run: venv
	@$(GW) -c $(CONFIG) check-config
	@echo ""
	@echo "  attachment-gateway is starting with $(CONFIG)"
	@echo "  Send mail to any address @contact.example via SMTP 127.0.0.1:2525, e.g."
	@echo "    swaks --server 127.0.0.1:2525 --to support@contact.example --attach @invoice.pdf"
	@echo "  or: make demo   (in another shell: sends a 12 MiB PDF and opens the link)"
	@echo "  Forwarded mail lands in the Maildir var/outbox/new/; attachments in var/objects/;"
	@echo "  links are served on http://127.0.0.1:8025/a/<token>; audit events in var/log/audit.jsonl."
	@echo "  Stop with Ctrl-C."
	@echo ""
	$(GW) -c $(CONFIG) serve

## make test: install everything the tests need, lint, then run the whole
## suite: the fast layer first (in-process, seconds; stops at the first
## failure), then the tests against real servers.
test: venv test-deps lint
	$(PY) -m pytest -q -p no:cacheprovider -x tests/unit
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 --ignore=tests/unit

## make test-fast: only the fast layer (policies, parser, rewriter, pipeline in-process).
test-fast: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

## make lint: ruff and mypy, as configured in pyproject.toml; both must be clean.
lint: venv
	$(VENV)/bin/ruff check gateway policies bench scripts
	$(VENV)/bin/mypy gateway policies bench scripts

test-deps:
	@if [ "$$(id -u)" = "0" ]; then scripts/install-test-deps.sh && scripts/install-storage-deps.sh; \
	else sudo scripts/install-test-deps.sh && sudo scripts/install-storage-deps.sh; fi

## make bench: the benchmark, each figure beside baselines measured in the same run.
bench: venv test-deps
	$(PY) bench/run.py $(BENCH_ARGS)

## make demo: send the tour's message to a running gateway and check the link.
demo: venv
	$(PY) scripts/demo.py

check-config: venv
	$(GW) -c $(CONFIG) check-config

clean:
	rm -rf $(VENV) var build *.egg-info

# Orrery: `make test` runs every test, `make demo` runs the main job.
# Both bootstrap what they need, idempotently.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: test demo lint typecheck bench setup mosquitto chromium clean

setup: $(STAMP) mosquitto chromium

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Debian's mosquitto, only where it is missing (the tests start their own broker).
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

# Debian's chromium, only where it is missing (the console's browser tests drive it through
# Playwright; Playwright's own browser download is never used).
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing chromium"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check shared firmware

typecheck: setup
	$(BIN)/python -m tools.dev.typecheck

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m tools.dev.consts --check
	$(BIN)/python -m tools.board.build --check
	$(BIN)/python -m tools.dev.typecheck
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile tests

bench: setup
	$(BIN)/orrery bench device --json

demo: setup
	$(BIN)/orrery demo

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis

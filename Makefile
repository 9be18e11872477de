# The two commands of the README. Each installs what is missing first (scripts/setup.sh is
# quick when everything is already there).

CARGO ?= cargo

.PHONY: setup demo test lint build

setup:
	@scripts/setup.sh

## Build and run the demo: the whole built pipeline on the bundled data, private database.
demo: setup
	$(CARGO) run --release --locked -p llamagen-cli --bin llamagen -- demo

## Formatting, lints, and the whole test suite.
# Without incremental caches: the suite builds each crate once, and their caches (2.3 GB) would
# only fill the disk; CARGO_INCREMENTAL=1 in the environment keeps them.
CARGO_INCREMENTAL ?= 0

# One OpenMP thread per process: the tests run two at a time and most start `llamagen`
# processes of their own, and libtorch's default (a thread per core, spinning while it waits)
# oversubscribes the cores: two demo runs side by side took 465 s so, and 165 s with one thread each.
test: setup lint
	OMP_NUM_THREADS=1 CARGO_INCREMENTAL=$(CARGO_INCREMENTAL) $(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all --check
	CARGO_INCREMENTAL=$(CARGO_INCREMENTAL) $(CARGO) clippy --workspace --all-targets --locked -- -D warnings

build: setup
	$(CARGO) build --workspace --release --locked

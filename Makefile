# softmax-bench. The two commands a user needs: `make bench` and `make test`; each sets up first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Debian's dataset-fashion-mnist puts the four IDX .gz files here.
SYSTEM_FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup dataset test bench report lint microbench check-report clean

setup: $(STAMP) dataset

# torch/torchvision are pinned here (they lie on this machine's disk); pyproject accepts torch >= 2.4.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The real Fashion-MNIST: use what is there, else install Debian's package (as root), else say how.
dataset:
	@if [ -n "$$FASHION_MNIST_DIR" ] || ls data/FashionMNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1 \
	   || [ -f $(SYSTEM_FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	   echo "installing Debian's dataset-fashion-mnist"; \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	   echo "Fashion-MNIST not found; install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist)"; \
	   echo "or put the four IDX files in data/FashionMNIST/raw or \$$FASHION_MNIST_DIR. softmax-bench will try torchvision's download."; \
	fi

test: setup
	$(BIN)/python -m pytest -q

# The whole study into one run folder, then its report. QUICK=1 for the short version.
bench: setup
	$(BIN)/softmax-bench all $(if $(QUICK),--quick)

report: setup
	$(BIN)/softmax-bench report $(RUN)

microbench: setup
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable --benchmark-only --benchmark-autosave

lint: $(STAMP)
	$(BIN)/ruff check bench softmax_impls tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks *.egg-info

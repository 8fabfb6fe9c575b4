# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The core install trains, evaluates and predicts (`make demo`); the tests add every extra.
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Pinned so that pip takes the local wheels on the development machines; any machine resolves them.
TORCH := torch==2.14.1 torchvision==0.29.1
OUT ?= demo-out

.PHONY: demo real test test-fast venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/lumbarclip demo --out $(OUT)

# The paper's own cohort (mid-sagittal slices): make real SLICES=yolospine-at-aab0746 NOTES=local_data OUT=real-out
real: $(STAMP)
	@test -n "$(SLICES)" -a -n "$(NOTES)" -a "$(origin OUT)" != "file" || { echo "usage: make real SLICES=DIR NOTES=DIR OUT=DIR"; exit 2; }
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) bench/real.py --slices "$(SLICES)" --notes "$(NOTES)" --out "$(OUT)"

test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest

test-fast: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -m 'not slow'

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

# kcnn developer entry points. `make demo` and `make test` are all a new clone needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
KCNN   := $(VENV)/bin/kcnn
STAMP  := $(VENV)/.kcnn-installed

.PHONY: install demo test test-fast lint bench clean check-wheel

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Train the quickstart recipe on the bundled digits data, then evaluate that run.
demo: install
	@mkdir -p runs
	$(KCNN) train recipes/quickstart.yaml | tee runs/.demo-train.log
	$(KCNN) evaluate "$$(tail -n 1 runs/.demo-train.log)"

# The full suite on TensorFlow, then the backend-neutral parts (layers, the model
# registry, losses) again on the JAX backend, with the JAX end-to-end tests.
JAX_TESTS := tests/layers tests/models/test_registry.py tests/losses tests/backend_jax

# Two pytest-xdist workers (one per core; a test file stays on one worker so its module
# fixtures are built once); timing-sensitive tests run alone afterwards.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(PY) -m pytest -q -m serial
	KERAS_BACKEND=jax $(PY) -m pytest -q -n 2 --dist loadfile $(JAX_TESTS)

# Build the wheel, install it into a fresh environment and train from it (as CI does).
check-wheel: install
	bash .ci/check-wheel

lint: install
	$(VENV)/bin/ruff check kcnn tests benchmarks

bench: install
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) runs .pytest_cache build dist

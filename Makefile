# The README's two commands are `make demo` and `make test`; CI runs `make test` (.ci/run).
.PHONY: setup demo test lint
VENV := .venv/bin

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(VENV)/ruff check .
	$(VENV)/python -m pytest -q

lint: setup
	$(VENV)/ruff check .

# Benchmarks (bench/README.md): tables on stdout, results in bench/results/. BENCH_ARGS=--quick for a smoke run.
.PHONY: bench
bench: setup
	nice -n 19 $(VENV)/python -m bench $(BENCH_ARGS)

# The project image (infra/Dockerfile), built from this checkout and pushed; needs a Docker
# engine and a registry login (none here). IMAGE defaults to the tag the manifests and the
# compiled pipelines use. image-lock re-pins infra/requirements-image.txt from the tested .venv.
.PHONY: image image-lock
IMAGE ?= ghcr.io/softprompt/softprompt:0.1.0
image:
	docker build --platform linux/amd64 -f infra/Dockerfile -t $(IMAGE) .
	docker push $(IMAGE)

image-lock: setup
	$(VENV)/python infra/lock_image.py

# The two commands a newcomer needs (README): `make quickstart` and `make test`.
VENV ?= .venv
export PYTHONUNBUFFERED=1

.PHONY: setup quickstart test test-slow autoscale-demo lock bench clean

setup:
	@bash scripts/setup.sh

quickstart: setup
	$(VENV)/bin/sitf-ray quickstart

test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

# The SIPF job on Ray's autoscaler (fake multi-node provider, node types from cluster.yaml): scale-up from
# zero workers, a lost node, scale-down; writes benchmarks/results/autoscale.json (docs/CLUSTER.md).
autoscale-demo: setup
	$(VENV)/bin/python -m sitf_ray.cluster.autoscale --out benchmarks/results/autoscale.json

lock: setup
	head -2 constraints-cpu.txt > constraints-cpu.txt.new
	$(VENV)/bin/pip freeze --exclude-editable | grep -vE '^(torchvision|torchaudio|torchcodec|triton)==' >> constraints-cpu.txt.new
	mv constraints-cpu.txt.new constraints-cpu.txt

clean:
	rm -rf runs .pytest_cache

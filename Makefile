# The two commands a newcomer needs (README): `make quickstart` and `make test`.
VENV ?= .venv
export PYTHONUNBUFFERED=1
export RAY_AUTH_MODE ?= disabled

.PHONY: setup quickstart test test-slow lock bench clean

setup:
	@bash scripts/setup.sh

quickstart: setup
	$(VENV)/bin/sitf-ray quickstart

test: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: setup
	$(VENV)/bin/python -m pytest -q -m slow

lock: setup
	head -2 constraints-cpu.txt > constraints-cpu.txt.new
	$(VENV)/bin/pip freeze --exclude-editable | grep -vE '^(torchvision|torchaudio|torchcodec|triton)==' >> constraints-cpu.txt.new
	mv constraints-cpu.txt.new constraints-cpu.txt

clean:
	rm -rf runs .pytest_cache

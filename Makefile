# Two entry points: `make run` and `make test` (see README). Everything else is a helper target.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: setup run test bench-quick clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# Until the web application lands, `make run` demonstrates the engine end to end on the
# bundled digits dataset: pretrain a small CNN, adapt it to 60% of its measured latency.
run: setup
	$(PY) -m adaptation.netadapt pretrain --arch plain_cnn --width 0.5 --dataset digits \
		--resolution 16 --holdout 0.15 --epochs 8 --lr 0.05 --batch-size 64 --out runs/demo/original.pt
	$(PY) -m adaptation.netadapt adapt --model runs/demo/original.pt --dataset digits \
		--resolution 16 --holdout 0.15 --budget 60% --initial-reduction 0.1 --decay 0.9 \
		--short-term-steps 30 --long-term-epochs 2 --batch-size 64 --out runs/demo

test: setup
	$(PY) -m pytest

bench-quick: setup
	$(PY) bench/tradeoff.py --quick

clean:
	rm -rf runs bench/out .pytest_cache

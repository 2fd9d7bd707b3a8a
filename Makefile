# Two entry points: `make run` and `make test` (see README). Everything else is a helper target.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: setup datasets migrate run demo test test-production bench-quick clean

# Production-mode services for `make test` (started by .ci/run when not running).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/netadapt
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Front-end libraries (Chart.js) come from the npm registry and are served from node_modules.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --silent --no-audit --no-fund

setup: $(STAMP) node_modules/.package-lock.json

# Fashion-MNIST is a built-in dataset when Debian's package is installed: `make run` installs it
# where it can (as root, with apt-get), else says in one line how. Silent once it is installed.
FASHION_MNIST_PACKAGE ?= dataset-fashion-mnist
datasets:
	@dpkg -s $(FASHION_MNIST_PACKAGE) >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing $(FASHION_MNIST_PACKAGE) (the Fashion-MNIST built-in dataset) with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		{ apt-get install -y -qq $(FASHION_MNIST_PACKAGE) || \
		  { apt-get update -qq && apt-get install -y -qq $(FASHION_MNIST_PACKAGE); }; } >/dev/null 2>&1 || \
		echo "Could not install $(FASHION_MNIST_PACKAGE) with apt-get: Fashion-MNIST is not offered (digits are)"; \
	else \
		echo "Fashion-MNIST is not offered: 'sudo apt-get install $(FASHION_MNIST_PACKAGE)' adds it (then make run again)"; \
	fi

migrate: setup
	$(PY) manage.py migrate --verbosity 0
	$(PY) manage.py bootstrap

# The application on its embedded default: SQLite (WAL), a filesystem broker, one Celery worker
# with its beat, uvicorn. Ctrl+C stops both. Data lives in ./data (NETADAPT_DATA_DIR).
run: setup datasets
	$(PY) -m webapp.serve

# The engine alone from the command line: pretrain a small CNN on digits, adapt it to 60% of
# its measured latency, write results, plot and models to runs/demo.
demo: setup
	$(PY) -m adaptation.netadapt pretrain --arch plain_cnn --width 0.5 --dataset digits \
		--resolution 16 --holdout 0.15 --epochs 8 --lr 0.05 --batch-size 64 --out runs/demo/original.pt
	$(PY) -m adaptation.netadapt adapt --model runs/demo/original.pt --dataset digits \
		--resolution 16 --holdout 0.15 --budget 60% --initial-reduction 0.1 --decay 0.9 \
		--short-term-steps 30 --long-term-epochs 2 --batch-size 64 --out runs/demo

# The whole suite on the embedded default (SQLite, filesystem broker, in-memory channel layer),
# then the tests marked `services` again against PostgreSQL and Redis.
test: setup
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-production

test-production: setup
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) SECRET_KEY=test-only \
		$(PY) -m pytest -m services

bench-quick: setup
	$(PY) bench/tradeoff.py --smoke --regime mbv1-0.5-fmnist28 --seeds 0

clean:
	rm -rf runs bench/out .pytest_cache

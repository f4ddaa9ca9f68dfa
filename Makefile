# The verbs a user types. `make help` lists them. Every target uses the project's own .venv/, except on
# a Kaggle or Colab notebook (or with USE_SYSTEM_PYTHON=1), where they use the notebook's own Python and
# install into it without touching its TensorFlow (src/melanoma/tools/notebook.py).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
NOTEBOOK := $(if $(filter-out 0,$(USE_SYSTEM_PYTHON))$(KAGGLE_KERNEL_RUN_TYPE)$(COLAB_RELEASE_TAG)$(COLAB_GPU),1,)
NOTEBOOK_STAMP ?= .notebook-installed
ifeq ($(NOTEBOOK),1)
PY := $(PYTHON)
INSTALLED := $(NOTEBOOK_STAMP)
SERVE_INSTALLED := $(NOTEBOOK_STAMP)-serve
else
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SERVE_INSTALLED := $(VENV)/.installed-serve
endif
export NO_ALBUMENTATIONS_UPDATE := 1
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

CONFIG ?= configs/demo.yaml
FOLD ?= all
SET ?=
SETARG = $(if $(SET),--set $(SET),)
DEMO := input/demo

.DEFAULT_GOAL := help
.PHONY: help install demo lint test test-full train resume infer score report compare sweep blend bench bench-trees serve tensorboard submit leaderboard data wheels clean-demo

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: CONFIG=configs/<name>.yaml FOLD=<k|all> SET='key=value ...' GRID='key=a,b ...' SEEDS=N FILE=... MSG=... CONFIGS=... METHOD=... PORT=... HOST=... LOGDIR=... TENSORBOARD_PORT=..."
	@echo "  USE_SYSTEM_PYTHON=1 (automatic on Kaggle/Colab): use this Python and its TensorFlow, no .venv/"

# In CI (CI=true) install also brings the serve extra (gradio, fastapi, uvicorn) that the tests use.
install: $(INSTALLED) $(if $(filter true,$(CI)),$(SERVE_INSTALLED)) ## create .venv/ and install the project into it (a notebook: into its own Python)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# WHEELS=<folder of make wheels>: offline, from that folder alone (a notebook with the internet off)
$(NOTEBOOK_STAMP): pyproject.toml
	$(PY) src/melanoma/tools/notebook.py $(if $(WHEELS),--wheels $(WHEELS),--extras dev)
	touch $@

$(VENV)/.installed-serve: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,serve]'
	touch $@

$(NOTEBOOK_STAMP)-serve: $(NOTEBOOK_STAMP)
	$(PY) src/melanoma/tools/notebook.py --extras dev serve
	touch $@

$(DEMO)/train.csv: | $(INSTALLED)  # train.csv comes last: without it, an earlier synth was interrupted
	$(PY) -m melanoma synth $(DEMO) --size 128 --patients 250 --seed 0 --force

$(DEMO)/records/encodings.json: $(DEMO)/train.csv
	$(PY) -m melanoma records --data $(DEMO) --out $(DEMO)/records --size 64

demo: install $(DEMO)/records/encodings.json ## synth -> records -> pretrained Lite0 CNN and trees on every fold -> rank blend -> score
	$(PY) train.py --config configs/demo.yaml --fold all $(SETARG)
	$(PY) infer.py --config configs/demo.yaml $(SETARG)
	$(PY) train.py --config configs/tabular.yaml --fold all $(SETARG)
	$(PY) infer.py --config configs/tabular.yaml $(SETARG)
	$(PY) -m melanoma blend configs/demo.yaml configs/tabular.yaml --method rank --name demo --force
	$(PY) -m melanoma score outputs/demo/oof.csv
	$(PY) -m melanoma score outputs/tabular/oof.csv
	$(PY) -m melanoma score outputs/blend-demo/oof.csv
	$(PY) -m melanoma report configs/demo.yaml $(SETARG)
	@echo "submission: submissions/blend-demo.csv (CNN alone: submissions/demo.csv, trees alone: submissions/tabular.csv)   report: outputs/demo/report/"

# The ISIC 2024 flow on generated data (configs/isic2024_*.yaml point at these folders)
DEMO_2024 := input/isic2024-demo
.PHONY: demo-2024

$(DEMO_2024)/train-metadata.csv: | $(INSTALLED)  # written last by synth
	$(PY) -m melanoma synth $(DEMO_2024) --layout isic2024 --patients 60 --test-patients 10 --lesions 30 \
	    --positive-rate 0.02 --size 130 --seed 0 --force

$(DEMO_2024)/records/records.json: $(DEMO_2024)/train-metadata.csv
	$(PY) -m melanoma records --isic2024 $(DEMO_2024) --out $(DEMO_2024)/records

demo-2024: install $(DEMO_2024)/records/records.json ## ISIC 2024 on generated data: synth -> records -> trees, Lite0 CNN, their stack -> submission.csv -> validate -> score
	$(PY) train.py --config configs/isic2024_tabular.yaml $(SETARG)
	$(PY) infer.py --config configs/isic2024_tabular.yaml $(SETARG)
	$(PY) train.py --config configs/isic2024_cnn.yaml $(SETARG)
	$(PY) infer.py --config configs/isic2024_cnn.yaml $(SETARG)
	$(PY) train.py --config configs/isic2024_stack.yaml $(SETARG)
	$(PY) infer.py --config configs/isic2024_stack.yaml $(SETARG)
	$(PY) -m melanoma validate submissions/submission.csv --sample $(DEMO_2024)/sample_submission.csv
	$(PY) -m melanoma compare outputs
	$(PY) -m melanoma score outputs/isic2024_stack/oof.csv --json
	@echo "submission: submissions/submission.csv (isic_id,target; trees alone: submissions/isic2024_tabular.csv, CNN alone: submissions/isic2024_cnn.csv); hidden labels: $(DEMO_2024)/test_labels.csv"

# ISIC 2017 Part 3 (real dermoscopy images, public test labels): ISIC2017=<the challenge's folder, as published>
ISIC2017 ?= input/isic2017/challenge
ISIC2017_RECORDS := input/isic2017/records
.PHONY: isic2017

$(ISIC2017_RECORDS)/records.json: | $(INSTALLED)
	$(PY) -m melanoma records --isic2017 "$(ISIC2017)" --out $(ISIC2017_RECORDS) --size 256

isic2017: install $(ISIC2017_RECORDS)/records.json ## ISIC 2017 (ISIC2017=its folder): records -> Lite0 CNN -> trees stacked on it -> OOF scores -> test AUC
	$(PY) train.py --config configs/isic2017_lite0.yaml $(SETARG)
	$(PY) infer.py --config configs/isic2017_lite0.yaml $(SETARG)
	$(PY) train.py --config configs/isic2017_stack.yaml $(SETARG)
	$(PY) infer.py --config configs/isic2017_stack.yaml $(SETARG)
	$(PY) -m melanoma score "$$($(PY) -m melanoma run-dir --config configs/isic2017_lite0.yaml $(SETARG))/oof.csv"
	$(PY) -m melanoma score "$$($(PY) -m melanoma run-dir --config configs/isic2017_stack.yaml $(SETARG))/oof.csv"
	@echo "test labels, read once per finished recipe (never to choose one):"
	$(PY) -m melanoma score submissions/isic2017_lite0.csv --labels $(ISIC2017_RECORDS)/test_labels.csv
	$(PY) -m melanoma score submissions/isic2017_stack.csv --labels $(ISIC2017_RECORDS)/test_labels.csv

TEST_WORKERS ?= 2
lint: install ## ruff on src and tests (its rules: pyproject.toml [tool.ruff]); make test runs it first
	$(PY) -m ruff check src tests

test: install $(SERVE_INSTALLED) lint ## lint, then the fast tests in TEST_WORKERS processes (about 7.5 minutes on 2 cores)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-full: install $(SERVE_INSTALLED) lint ## lint, then every test, the slow ones too
	$(PY) -m pytest -q -m "" -n $(TEST_WORKERS)

train: install ## train FOLD (a number or all) of CONFIG
	$(PY) train.py --config "$(CONFIG)" --fold $(FOLD) $(SETARG)

resume: install ## continue CONFIG's interrupted FOLD after its last completed epoch
	$(PY) train.py --config "$(CONFIG)" --fold $(FOLD) --resume $(SETARG)

infer: install ## TTA + fold ensemble of CONFIG -> submissions/<name>.csv
	$(PY) infer.py --config "$(CONFIG)" $(SETARG)

# the run's folder as the Python commands find it (name, output_dir, SET), not from the file's name
score: install ## OOF AUC of CONFIG's run, with its confidence interval
	@run="$$($(PY) -m melanoma run-dir --config "$(CONFIG)" $(SETARG))" && \
	    echo "$(PY) -m melanoma score $$run/oof.csv" && $(PY) -m melanoma score "$$run/oof.csv"

report: install ## ROC, histograms, training curves and cutoff table of CONFIG's run
	$(PY) -m melanoma report "$(CONFIG)" $(SETARG)

compare: install ## table of OOF AUC across every run in outputs/
	$(PY) -m melanoma compare outputs

sweep: install ## a grid of settings as runs, trained, predicted, then compared: make sweep CONFIG=... GRID='key=a,b ...' [SEEDS=N]
	@test -n "$(GRID)" || { echo "usage: make sweep CONFIG=configs/<name>.yaml GRID='trees.learning_rate=0.05,0.1' [SEEDS=N] [FOLD=k|all] [SET='key=value ...']"; exit 2; }
	$(PY) -m melanoma sweep --config $(CONFIG) --grid $(GRID) --fold $(FOLD) $(if $(SEEDS),--seeds $(SEEDS),) $(SETARG)

blend: install ## blend runs: make blend CONFIGS="configs/a.yaml configs/b.yaml" METHOD=mean|rank|weights
	@test -n "$(CONFIGS)" || { echo "usage: make blend CONFIGS='configs/a.yaml configs/b.yaml' [METHOD=rank]"; exit 2; }
	$(PY) -m melanoma blend $(CONFIGS) --method $(or $(METHOD),mean)

bench: install ## throughput figures (input pipelines, model, records): table, JSON in outputs/bench.json
	$(PY) -m melanoma bench --config configs/demo.yaml --set data.image_size=256 $(SET) --synthetic --out outputs/bench.json

bench-trees: install ## trees on 400,000 generated ISIC 2024 rows: seconds and peak memory (JSON in outputs/bench_trees.json)
	$(PY) -m melanoma.tools.bench_trees --out outputs/bench_trees.json $(if $(SET),--set $(SET),)

WHEELS_DIR ?= wheels
FREEZE ?=
wheels: install ## the project + every dependency a notebook lacks as wheels in WHEELS_DIR/ (FREEZE=the notebook's pip freeze)
	$(PY) -m melanoma.tools.wheels --out $(WHEELS_DIR) $(if $(FREEZE),--freeze $(FREEZE),)

PORT ?= 7860
HOST ?= 127.0.0.1
serve: $(SERVE_INSTALLED) ## web page + POST /predict for one image on CONFIG's trained run (PORT, HOST)
	$(PY) -m melanoma serve --config "$(CONFIG)" --port $(PORT) --host $(HOST)

LOGDIR ?= outputs
TENSORBOARD_PORT ?= 6006
tensorboard: install ## TensorBoard on the folds' scalars of every run in LOGDIR (outputs), at HOST:TENSORBOARD_PORT (6006)
	@test -d "$(LOGDIR)" || { echo "LOGDIR=$(LOGDIR) is not a folder: give the folder of runs (outputs) or of one run"; exit 2; }
	@find "$(LOGDIR)" -name 'events.out.tfevents*' -print -quit | grep -q . || echo "note: $(LOGDIR) holds no TensorBoard logs yet (train a run with train.tensorboard: true); the board stays empty until it does"
	$(PY) -m tensorboard.main --logdir "$(LOGDIR)" --port $(TENSORBOARD_PORT) --host $(HOST)

submit: install ## validate FILE, then upload it with the Kaggle CLI: make submit FILE=submissions/x.csv MSG="..."
	@test -n "$(FILE)" || { echo "usage: make submit FILE=submissions/<name>.csv MSG='message' [CONFIG=...]"; exit 2; }
	$(PY) -m melanoma submit $(FILE) -m "$(MSG)" $(if $(filter command line,$(origin CONFIG)),--config "$(CONFIG)",)

leaderboard: install ## fetch Kaggle scores of past submissions and join them to submissions/log.csv
	$(PY) -m melanoma leaderboard

SIZE ?= 256
data: install ## download the competition CSVs and the public TFRecords of SIZE into input/ (Kaggle CLI)
	$(PY) -m melanoma data --size $(SIZE) --out input

clean-demo: ## remove the demo data, its runs and their submissions
	rm -rf $(DEMO) outputs/demo outputs/tabular outputs/blend-demo submissions/demo.csv submissions/tabular.csv submissions/blend-demo.csv

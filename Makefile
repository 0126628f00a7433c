# Every target creates .venv with the pinned packages when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# opencv-contrib-python contains all of opencv-python; two OpenCV wheels in one venv overwrite each other's cv2.
	$(BIN)/python -m pip uninstall --quiet --yes opencv-python opencv-python-headless 2>/dev/null || true
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dl09 demo --output demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Trains the SSD on BCCD and Aquarium, the RPN, Faster R-CNN and R-CNN on BCCD, exports, evaluates,
# times every runtime and the optimizers, and measures the peers (torchvision SSDlite, YOLOv8n) in
# .venv-peers, about 6 GB (an estimate: about 3.5 hours on 2 cores).
bench: $(STAMP)
	SHARED=$(SHARED) ./scripts/benchmarks.sh

clean:
	rm -rf $(VENV) demo .pytest_cache

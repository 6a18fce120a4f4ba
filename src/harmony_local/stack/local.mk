# The local stack (harmony_local) and the browser tests. Included by the main Makefile:
#   -include layers/engine/harmony_local/local.mk
# Uses the main Makefile's VENV/PY and its `setup` target.

LOCAL_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
LOCAL_REPO := $(abspath $(LOCAL_MK_DIR)/../../..)
LOCAL_PORT ?= 3000

.PHONY: local-stack test-local test-browser

local-stack: setup ## the local stack: web page + API (template.yaml's handlers) + embedded S3 with the samples; stays up
	$(PY) -m harmony_local serve --port $(LOCAL_PORT)

test-local: setup ## tests of the local stack (HTTP server, S3 triggers, embedded S3)
	$(PY) -m pytest $(LOCAL_REPO)/tests/local

test-browser: setup ## install Chromium + Playwright if needed, then the browser tests (writes docs/img/page.png)
	bash $(LOCAL_REPO)/tests/browser/setup.sh $(abspath $(VENV))
	HARMONY_BROWSER_REQUIRED=1 $(PY) -m pytest $(LOCAL_REPO)/tests/browser

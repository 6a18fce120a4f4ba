# Real `sam local invoke` through podman in a private network namespace (no Docker).
# Included by the main Makefile:  include tools/sam-local/sam-local.mk
# Needs root (debootstrap, rootful podman, unshare --net). See tools/sam-local/test.sh.

SAM_LOCAL_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
SAM_LOCAL_REPO := $(abspath $(SAM_LOCAL_DIR)/../..)

# What sam-local-test needs first: the project venv (.venv with moto[server], pytest, boto3,
# PyYAML), made by the main Makefile's `setup` target.
SAM_LOCAL_PREREQS ?= setup

.PHONY: sam-local-image sam-local-test

sam-local-image: ## build/import the local python3.13 x86_64 Lambda base image into podman (cached; root)
	bash $(SAM_LOCAL_REPO)/tools/lambda-image/build.sh

sam-local-test: $(SAM_LOCAL_PREREQS) ## real `sam local invoke` of every function against moto, via podman in a private netns (root)
	bash $(SAM_LOCAL_REPO)/tools/sam-local/test.sh

# Real `sam local invoke` through podman in a private network namespace (no Docker).
# Included by the main Makefile:  include tools/sam-local/sam-local.mk
# Needs root (debootstrap, rootful podman, unshare --net). See tools/sam-local/test.sh.

SAM_LOCAL_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
SAM_LOCAL_REPO := $(abspath $(SAM_LOCAL_DIR)/../..)

.PHONY: sam-local-image sam-local-test

## Build/import the local python3.13 x86_64 Lambda base image into podman (cached).
sam-local-image:
	bash $(SAM_LOCAL_REPO)/tools/lambda-image/build.sh

## Image + sam build + pytest tests/sam_local (HARMONY_SAM_LOCAL=1) inside the netns.
sam-local-test:
	bash $(SAM_LOCAL_REPO)/tools/sam-local/test.sh

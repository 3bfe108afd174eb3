# The two commands of the README:
#   make serve   set up (packages, npm, build) and start the server on 127.0.0.1
#   make test    set up and run every test (ctest); GPU tests skip without a device
BUILD_DIR ?= build
CONFIG ?= config/inferd.toml

.PHONY: setup serve test build gpu clean

setup:
	bash scripts/setup.sh

build: setup

serve: setup
	./$(BUILD_DIR)/bin/inferd --config $(CONFIG)

test: setup
	cd $(BUILD_DIR) && ctest --output-on-failure -j2

# Build for sm_90 here, bundle, run GPU tests and benchmarks on the lent H100.
gpu:
	bash scripts/gpu-bundle.sh

clean:
	rm -rf $(BUILD_DIR)

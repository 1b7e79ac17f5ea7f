# A thin wrapper over CMake: `make`, `make test`, `make deps`, `make asan`.
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all test deps asan asan-test bench fuzz clean

all: $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

$(BUILD)/Makefile:
	cmake -S . -B $(BUILD)

CTEST_FLAGS ?= --output-on-failure

test: all
	cd $(BUILD) && ctest $(CTEST_FLAGS) -j $(JOBS)

asan: $(ASAN_BUILD)/Makefile
	cmake --build $(ASAN_BUILD) -j $(JOBS)

$(ASAN_BUILD)/Makefile:
	cmake -S . -B $(ASAN_BUILD) -DVQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug

asan-test: asan
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest $(CTEST_FLAGS) -j $(JOBS)

# The libFuzzer targets (clang, with ASan and UBSan), each for FUZZ_SECONDS.
fuzz:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DVQ_FUZZ=ON -DVQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	sh spec/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

deps:
	sh .ci/deps.sh

bench: all
	sh bench/run.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

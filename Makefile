# t2t-edge. `make setup` creates .venv; every other target runs it first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
T2TEDGE := $(VENV)/bin/t2tedge
OUT ?= artifacts
# The Table 4 models, as t2tedge.harness.table4_grid names them (read when a recipe runs, after setup).
MODELS ?= $(shell $(PY) -c 'from t2tedge.harness.table4_grid import TABLE4_MODELS; print(*TABLE4_MODELS)')
PYTEST_ARGS ?=

.PHONY: table4-imagenette setup test test-slow export-onnx export-coreml export-openvino export-litert export-executorch quantize parity bench-parity arm-check table4 bench-onnx bench-coreml bench-ptq bench-openvino bench-litert bench-executorch bench-int8 bench-speed bench-table4 profile-report clean help

help:
	@echo "make setup        create $(VENV) and install t2t-edge (torch CPU wheel pinned)"
	@echo "make export-onnx  export the five Table 4 models to $(OUT)/onnx (OUT=..., PRECISION=fp16|int8)"
	@echo "make export-coreml  T2T-ViT-7/12 .mlpackage to artifacts/coreml (OUT=, ALL=1 adds the MobileNets,"
	@echo "                    CHECKPOINT=path or WEIGHTS=random, PRECISION=fp32|fp16|w8|int8, PALETTIZE=6|4, TARGET=iOS17)"
	@echo "make export-openvino  OpenVINO IR of the five models to $(OUT)/openvino (PRECISION=fp16|int8)"
	@echo "make export-litert  LiteRT .tflite of the five models to $(OUT)/litert (PRECISION=fp16|w8|int8)"
	@echo "make export-executorch  ExecuTorch .pte of the five models to $(OUT)/executorch (PRECISION=w8|int8,"
	@echo "                    DELEGATE=coreml for iOS)"
	@echo "make quantize     INT8 QDQ models (calibrated on ../shared imagenet-sample) to $(OUT)/int8"
	@echo "make parity       parity of the files make export-* wrote, against each other and PyTorch (JUNIT=DIR for CI)"
	@echo "make bench-parity how long file parity (4 files, 64 images) and block parity (2 files, 16 images) take"
	@echo "make arm-check    our files and the device bundle on ARM kernels under qemu-user (builds .arm-env/ once)"
	@echo "make table4       Table 4 grid (torch/onnxruntime/openvino x fp32/int8 here) to results/ (RAY=auto|host:port)"
	@echo "make table4-imagenette  the grid on Imagenette-trained models (val, calibrated on train) to results/imagenette"
	@echo "make bench-onnx   ORT latency: our T2T-ViT-7 export vs a naive export, and GEMM peak"
	@echo "make bench-coreml Core ML package sizes, export times and weight round-trip accuracy (MobileNetV2)"
	@echo "make bench-ptq    plain onnxruntime.quantization peers vs our PTQ: top-1, agreement, SQNR, latency"
	@echo "make bench-litert LiteRT parity/delegation for the five models; fp32/int8/w8/PT2E peer vs ONNX Runtime"
	@echo "make bench-executorch ExecuTorch delegation/parity for the five models; fp32/w8/int8/plain peer vs ORT, LiteRT"
	@echo "make bench-int8   INT8 of one quantization plan on every target: agreement with fp32 and ORT INT8, latency"
	@echo "make bench-speed  does INT8 pay? fp32/int8/w8 p50 and agreement per target, the auto choice, the CPU's int8 support"
	@echo "make profile-report per-op profiles (T2T-ViT-7, MobileNetV2; fp32, INT8; every CPU runtime) to docs/results"
	@echo "make bench-table4 Table 4 cells vs t2tedge profile of the files t2tedge export writes (after table4-imagenette)"
	@echo "make bench-openvino OpenVINO fp32/INT8 vs NNCF's INT8 and ONNX Runtime: top-1, agreement, SQNR, latency"
	@echo "make test         the test suite (fast)"
	@echo "make test-slow    the test suite including slow sweeps"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# The CPU wheel first, so no dependency can pull a CUDA build of torch.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev,plot,coreml,openvino,litert,executorch,cluster]'
	touch $@

setup: $(VENV)/.installed

# Two workers (pytest-xdist), a test file whole on one: export, conversion and image decoding are single-threaded, so
# two files at a time use both cores (measured on 2 cores: 920 s against 1137 s on one worker).
test: setup
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

export-onnx: setup
	@for m in $(MODELS); do $(T2TEDGE) export onnx $$m --out $(OUT)/onnx $(if $(PRECISION),--precision $(PRECISION)) || exit 1; done

# Core ML: OUT given on the command line is the package folder itself; by default artifacts/coreml. Without
# CHECKPOINT or WEIGHTS, T2T-ViTs take their official release weights (the MODEL.official tag, downloaded once).
COREML_OUT = $(if $(filter command line environment,$(origin OUT)),$(OUT),$(OUT)/coreml)
COREML_MODELS = $(if $(ALL),$(MODELS),$(if $(filter command line environment,$(origin MODELS)),$(MODELS),t2t_vit_7 t2t_vit_12))
COREML_WEIGHTS = $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT),$(if $(filter random,$(WEIGHTS)),--checkpoint random))
COREML_TAG = $(if $(strip $(COREML_WEIGHTS)),,.official)
COREML_FLAGS = $(if $(PRECISION),--precision $(PRECISION)) $(if $(PALETTIZE),--palettize $(PALETTIZE)) $(if $(TARGET),--deployment-target $(TARGET))

export-coreml: setup
	@for m in $(COREML_MODELS); do \
	  case "$$m" in t2t_vit_*) m=$$m$(COREML_TAG);; esac; \
	  $(T2TEDGE) export coreml $$m --out $(COREML_OUT) $(COREML_WEIGHTS) $(COREML_FLAGS) || exit 1; done

# OpenVINO IR from our ONNX export: fp32 by default, PRECISION=fp16 (fp16 weights) or int8 (calibrated on
# ../shared imagenet-sample with OpenVINO's quantization choices).
export-openvino: setup
	@for m in $(MODELS); do $(T2TEDGE) export openvino $$m --out $(OUT)/openvino $(if $(PRECISION),--precision $(PRECISION)) || exit 1; done

# LiteRT for Android: fp32 by default; PRECISION=int8 calibrates on ../shared imagenet-sample.
export-litert: setup
	@for m in $(MODELS); do $(T2TEDGE) export litert $$m --out $(OUT)/litert $(if $(PRECISION),--precision $(PRECISION)) || exit 1; done

# ExecuTorch: XNNPACK fp32 by default; PRECISION=w8 (int8 weights, no calibration) or int8 (calibrated on
# ../shared imagenet-sample); DELEGATE=coreml writes iOS programs (fp32 only).
export-executorch: setup
	@for m in $(MODELS); do $(T2TEDGE) export executorch $$m --out $(OUT)/executorch $(if $(PRECISION),--precision $(PRECISION)) $(if $(DELEGATE),--delegate $(DELEGATE)) || exit 1; done

quantize: setup
	@for m in $(MODELS); do $(T2TEDGE) quantize $$m --out $(OUT)/int8 || exit 1; done

# The file form on what `make export-*` wrote under $(OUT): every file of each model, against each other and the
# PyTorch reference with the weights the exports took; JUNIT=DIR writes DIR/MODEL.xml for CI.
PARITY_SUFFIXES = onnx xml tflite pte mlpackage
parity: setup
	@for m in $(MODELS); do \
	  files=$$(for s in $(PARITY_SUFFIXES); do ls -d $(OUT)/*/$$m.$$s $(OUT)/*/$${m}_*.$$s 2>/dev/null; done); \
	  if [ -z "$$files" ]; then echo "no exported files of $$m under $(OUT)/: run make export-onnx (and export-openvino, export-litert, export-executorch) first"; exit 2; fi; \
	  $(T2TEDGE) parity $$files --reference $$m $(if $(JUNIT),--junit $(JUNIT)/$$m.xml) || exit 1; done

bench-parity: setup
	$(PY) benchmarks/bench_parity.py --out results/bench_parity.json

# RAY=auto runs the grid on a local Ray instance, RAY=host:6379 on a running cluster (docs/cluster.md).
RAY_FLAGS = $(if $(RAY),--ray $(RAY))

# DATA=/path/to/imagenet/val: the paper's Table 4 on your own ImageNet validation set, every model with its official
# release weights (downloaded once); LABELS= the devkit ground truth of a flat val folder, CALIB= calibration photos.
table4: setup
	$(T2TEDGE) table4 --out results $(if $(DATA),--data $(DATA) --weights official) $(if $(LABELS),--labels $(LABELS)) \
	  $(if $(CALIB),--calib $(CALIB)) $(RAY_FLAGS)

# Every model trained from scratch on Imagenette with one recipe; models without such weights yet are skipped.
table4-imagenette: setup
	$(T2TEDGE) table4 --suite imagenette --out results/imagenette $(RAY_FLAGS)

# After `make table4-imagenette`: its cells timed again beside `t2tedge profile` of the files `t2tedge export` writes.
bench-table4: setup
	$(PY) benchmarks/bench_table4.py

bench-onnx: setup
	$(PY) benchmarks/bench_onnx.py

bench-coreml: setup
	$(PY) benchmarks/bench_coreml.py

bench-ptq: setup
	$(PY) benchmarks/bench_ptq.py

bench-openvino: setup
	$(PY) benchmarks/bench_ptq.py --runtime openvino --out results/bench_openvino.json

bench-litert: setup
	$(PY) benchmarks/bench_litert.py --out results/bench_litert.json

bench-executorch: setup
	$(PY) benchmarks/bench_executorch.py --out results/bench_executorch.json

# One quantization plan on every target: INT8 agreement with fp32 and with the ONNX Runtime INT8 file, SQNR, latency.
bench-int8: setup
	$(PY) benchmarks/bench_int8.py --out results/bench_int8.json

# Times; run it alone on the machine. LIMIT=N scores N images per model (default: all).
bench-speed: setup
	$(PY) benchmarks/bench_speed.py --out results/bench_speed.json $(if $(LIMIT),--limit $(LIMIT))

# Builds its files once under artifacts/profile-report; run it alone on the machine (it times).
profile-report: setup
	$(PY) benchmarks/profile_report.py

clean:
	rm -rf $(OUT) results .pytest_cache

# ARM kernels without a device (opt-in, not in make test): builds .arm-env/ once from Debian arm64 packages, PyPI
# aarch64 wheels and qemu-user-static, then runs our files and the device bundle under emulated cortex-a53/-a76.
# LIMIT=N images per model (default 64), CPUS=cortex-a53,cortex-a76, TARGETS=onnxruntime,ort,litert,executorch,
# ARM_MODELS=t2t_vit_7.imagenette,mobilenet_v2_100 (one or both).
arm-check: setup
	$(PY) scripts/arm_check.py $(if $(LIMIT),--limit $(LIMIT)) $(if $(CPUS),--cpus $(CPUS)) \
		$(if $(TARGETS),--targets $(TARGETS)) $(if $(ARM_MODELS),--models $(ARM_MODELS))

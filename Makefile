# batman: thin wrappers around the `batman` CLI (python -m batman <command>). `make help` lists targets.
PYTHON        ?= python3
VENV          ?= .venv
BATMAN        := $(VENV)/bin/python -m batman
dataset_path  ?= data/DRV
result_path   ?= result
model         ?=
parts         ?= raw
url_base      ?= https://storage.googleapis.com/isl-datasets/DRV
NPROC         ?= 1
NNODES        ?= 1
RDZV          ?= localhost:29500
PYTEST_ARGS   ?=
SET           ?=
photos        ?= ../shared/images
pretrain_dir  ?= build/pretrain
minutes       ?= 95
# the U-Net baseline's training time: that of the shipped weights' fourteen stages (docs/MODEL_CARD.md), and its
# cosine schedule's length: the epochs it trains in that time alone on this project's 2-core CPU (45 s an epoch,
# docs/RESULTS.md, fifteenth session), so that the schedule ends with the budget (480 epochs ended at 60% of it)
unet_minutes  ?= 601
unet_epochs   ?= 800
# its train.amp: off (float32) is how that time was measured; bf16 trains the same epochs 1.7x faster on a CPU with
# native bf16 (scripts/bench_cpu_amp.py). The comparison's own run switched to bf16 at epoch 143 (docs/RESULTS.md,
# seventeenth session)
unet_amp      ?= off
# C of model.residual_rule set on the released weights: the largest that costs the dark training-side videos
# nothing (make residual_sweep: train_data val/dynamic and bright_train; docs/RESULTS.md, eighth session)
residual_rule ?= 0.05
# K of model.residual_cap and its block B set on them: of the (K, B) that cost the moving training-side videos at
# most 0.01 dB, the best on the static ones (same script, --caps, --cap-blocks; docs/RESULTS.md, ninth session)
residual_cap  ?= 1.5
residual_cap_block ?= 8
# whether that cap leaves each block's mean of the residual whole (model.residual_cap_mean, no training): the
# darkest real raws need it, their output fell as the filter state grew clean (docs/RESULTS.md, sixteenth session)
residual_cap_mean ?= True
# what the camera alignment matches each frame against, set on them (no training): the filter state, not the
# previous frame (held-out camera motions +0.1 to +0.8 dB, still scenes identical; docs/RESULTS.md, eleventh session)
align_to      ?= filter
# how it rates a fitted map against no motion, set on them (no training): the reference warped by the map, so camera
# motions of 0.1-0.3 stride-4 pixels a frame align (training-side camera motions +0.40 dB, still videos identical;
# docs/RESULTS.md, twelfth session)
align_rating  ?= warped
# S of model.output_smoothing set on them (no training): the output follows the gate, restarting where the camera
# moves; chosen from S = 3, 4, 5, 7 on the training-side videos (still +0.08 dB, MABD error -18%; docs/RESULTS.md,
# twelfth session)
output_smoothing ?= 4
# whether that smoothing ramps up over the first S frames (model.smoothing_ramp, no training), so that the first
# outputs are smoothed too: training-side still videos -0.02 to -0.04 dB, MABD error -44% to -50% (docs/RESULTS.md,
# seventeenth session)
smoothing_ramp ?= True
# the brightness `export --input` brings a burst to (data.exposure_level), set on them: stages 1-16 measured it on
# train_data (the median of 32 first frames); stage 20's 24-frame sets, the same photos, cameras and ratios, gave
# 0.170 from 32 and 0.178 from all 233 videos: a sampling difference, and the level kept is the one whose gains were
# checked on held-out bursts (median 0.95 of the true ratio; docs/RESULTS.md, fourteenth session)
exposure_level ?= 0.198254
# the earlier weights' share of a release averaged with them (release --blend): stage 16's in stage 20's release,
# stage 20's in stage 21's. Of 0.25, 0.5, 0.75, the best on the training-side still videos that chose nothing
# (train24's test split, 24 frames; docs/RESULTS.md, fourteenth session; for stage 21 they tie within 0.01 dB): stage
# 20 alone lost up to 0.46 dB on darker held-out still videos, the average keeps most of its gains
blend_weight  ?= 0.5
# G of model.single_frame_gate (release --single-frame, no training): the output takes the fine-tuned U-Net's (unet_s2)
# where the gate k opens, min(1, k / G). Of 0.35, 0.5, 0.7, 1.0, the best mean PSNR over training-side videos that chose
# nothing else (train24's, bright24's and bayer24's test splits, train24's 7 validation dynamic videos; docs/RESULTS.md,
# twentieth session)
single_frame_gate ?= 0.7
# what that U-Net reads (model.single_frame_input): filter, the filter state turning into the frame as the gate opens (the
# frame where the camera moved), or frame. filter: +0.06 dB mean and a third less MABD error on those videos at the same G
# (at G = 0.5, +0.02 dB more and more MABD error; docs/RESULTS.md, twenty-first session)
single_frame_input ?= filter
HELDOUT       := 'kodim19*' 'kodim2[0-4]*'
# clean real raws (../shared/fixtures): a second held-out set with a real sensor's colour and real scenes
fixtures      ?= ../shared/fixtures
RAW_SOURCES   := canon_550d_colorchart.dng kodak_dc50_grbg.kdc

MODEL_ARG := $(if $(model),--model $(model),)
SET_ARG   := $(if $(SET),--set $(SET),)
ifeq ($(NPROC)$(NNODES),11)
TRAIN := $(BATMAN) train
else
TRAIN := $(VENV)/bin/torchrun --nproc_per_node=$(NPROC) --nnodes=$(NNODES) --rdzv-backend=c10d --rdzv-endpoint=$(RDZV) -m batman train
endif

.PHONY: help install test test_all demo synth download_dataset prepare train_titan train_1080ti train_1080 \
        train_cpu evaluate export_video bench clean pretrain unet unet_baseline eval_raws residual_sweep

help:  ## list the targets
	@grep -E '^[a-z_0-9]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo "variables: dataset_path=$(dataset_path) result_path=$(result_path) model=$(model) NPROC=$(NPROC) SET='k=v ...'"

install: $(VENV)/.installed  ## create .venv with the pinned requirements and the package (idempotent)

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: install  ## run the CPU test suite (slow and GPU tests skipped)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test_all: install  ## run every test, slow ones included
	$(VENV)/bin/python -m pytest -m "" $(PYTEST_ARGS)

demo: install  ## synthetic dark raw video -> train -> evaluate -> export, into result/demo
	$(BATMAN) demo --out $(result_path)/demo

synth: install  ## write a small synthetic DRV-layout data set into dataset_path
	$(BATMAN) synth --out $(dataset_path) --videos 8 --frames 16 --size 512x768 --dynamic 2

download_dataset: install  ## download and extract DRV into dataset_path (parts=raw|preprocessed|all|long,short1,...)
	$(BATMAN) download --root $(dataset_path) --parts $(parts) --url-base $(url_base)

prepare: install  ## decode every raw frame once into a memory-mapped cache
	$(BATMAN) prepare --root $(dataset_path)

train_titan: install  ## train on a >21 GB GPU
	$(TRAIN) --root $(dataset_path) --preset titan --resume auto $(SET_ARG)

train_1080ti: install  ## train on a >8 GB GPU
	$(TRAIN) --root $(dataset_path) --preset 1080ti --resume auto $(SET_ARG)

train_1080: install  ## train on a >6 GB GPU
	$(TRAIN) --root $(dataset_path) --preset 1080 --resume auto $(SET_ARG)

train_cpu: install  ## train on the CPU (small crops)
	$(TRAIN) --root $(dataset_path) --preset cpu --resume auto $(SET_ARG)

evaluate: install  ## PSNR/SSIM/MABD table of a checkpoint and the baselines
	$(BATMAN) evaluate --root $(dataset_path) $(MODEL_ARG) --out $(result_path)

export_video: install  ## enhance videos into result_path/video/*.mp4 and result_path/frames/
	$(BATMAN) export --root $(dataset_path) $(MODEL_ARG) --out $(result_path)

bench: install  ## benchmarks: inference, export, data, memory, quality study
	$(BATMAN) bench all --out $(result_path)/bench

pretrain: install  ## reproduce trained_model/ from clean photos (photos=DIR; kodim19-24 held out; see docs/MODEL_CARD.md)
	$(BATMAN) synth --out $(pretrain_dir)/train_data --images $(photos) --exclude $(HELDOUT) --videos 120 --dynamic 40 \
	    --frames 12 --size 768x768 --cameras train --seed 1
	$(BATMAN) synth --out $(pretrain_dir)/heldout --images $(photos) --only $(HELDOUT) --videos 12 --dynamic 6 \
	    --frames 16 --size 768x768 --cameras heldout --seed 7 --test-only
	@echo "stage 1: $(minutes) min from scratch"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm --resume auto \
	    --set train.max_minutes=$(minutes) $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm --out $(pretrain_dir)/stage1.safetensors
	@echo "stage 2: a cosine schedule from the stage 1 weights (fresh optimiser)"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_cosine --resume auto \
	    --init $(pretrain_dir)/stage1.safetensors --set train.epochs=45 train.schedule=cosine train.warmup_steps=50 \
	    train.max_minutes=50 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_cosine --out $(pretrain_dir)/stage2.safetensors
	@echo "stage 3: 12-frame clips, so that the model learns to use more than 6 frames"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_long --resume auto \
	    --init $(pretrain_dir)/stage2.safetensors --set train.epochs=24 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=3e-4 data.frames=12 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_long --out $(pretrain_dir)/stage3.safetensors
	@echo "stage 4: the filter state supervised too, so that the filter averages where the scene is still"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_filter --resume auto \
	    --init $(pretrain_dir)/stage3.safetensors --set train.epochs=40 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=3e-4 data.frames=12 train.filter_weight=0.5 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_filter --out $(pretrain_dir)/stage4.safetensors
	@echo "stage 5: synth's moving videos join the training clips (rotation, zoom, objects), not only pans"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_dyn --resume auto \
	    --init $(pretrain_dir)/stage4.safetensors --set train.epochs=25 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=3e-4 data.frames=12 train.filter_weight=0.5 data.train_dynamic=True $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_dyn --out $(pretrain_dir)/stage5.safetensors
	@echo "stage 6: the filter loss at full weight, a lower learning rate"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s6 --resume auto \
	    --init $(pretrain_dir)/stage5.safetensors --set train.epochs=25 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=2e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s6 --out $(pretrain_dir)/stage6.safetensors
	@echo "stage 7: the filter's gate sees how far each frame departs from it; a small denoiser after the filter"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s7 --resume auto \
	    --init $(pretrain_dir)/stage6.safetensors --set train.epochs=40 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=2e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True model.gate_evidence=True \
	    model.denoiser=16 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s7 --out $(pretrain_dir)/stage7.safetensors
	@echo "stage 8: the exact colour pipeline with the file's matrix instead of a learned one"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s8 --resume auto \
	    --init $(pretrain_dir)/stage7.safetensors --set train.epochs=25 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=2e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True model.gate_evidence=True \
	    model.denoiser=16 model.pipeline=fixed train.patience=10 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s8 --out $(pretrain_dir)/stage8.safetensors
	@echo "stage 9: 7 moving videos validate too (the epoch is chosen on motion as well), moving clips twice"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s9 --resume auto \
	    --init $(pretrain_dir)/stage8.safetensors --set train.epochs=36 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=1.5e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True model.gate_evidence=True \
	    model.denoiser=16 model.pipeline=fixed data.val_dynamic=7 data.dynamic_repeat=2 train.patience=12 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s9 --out $(pretrain_dir)/stage9.safetensors
	@echo "stage 14: the residual reads the noise the filter holds (model.noise_input); brighter videos too (ratios 5-50)"
	$(BATMAN) synth --out $(pretrain_dir)/bright_train --images $(photos) --exclude $(HELDOUT) --videos 40 \
	    --frames 12 --size 768x768 --cameras train --seed 5 --ratio 5 50
	$(BATMAN) synth --out $(pretrain_dir)/bright_dyn --images $(photos) --exclude $(HELDOUT) --videos 0 --dynamic 20 \
	    --frames 12 --size 768x768 --cameras train --seed 6 --ratio 5 50
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s14 --resume auto \
	    --init $(pretrain_dir)/clstm_s9 --set train.epochs=24 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=1e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True data.val_dynamic=7 \
	    data.dynamic_repeat=2 data.extra_static=$(pretrain_dir)/bright_train data.extra_dynamic=$(pretrain_dir)/bright_dyn \
	    model.noise_input=True $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s14 --out $(pretrain_dir)/stage14.safetensors
	@echo "stage 15: photos rendered as raws render them (synth --bayer-sampled): real raws' colour aliasing"
	$(BATMAN) synth --out $(pretrain_dir)/bayer_train --images $(photos) --exclude $(HELDOUT) --videos 40 \
	    --frames 12 --size 768x768 --cameras train --seed 8 --bayer-sampled
	$(BATMAN) synth --out $(pretrain_dir)/bayer_dyn --images $(photos) --exclude $(HELDOUT) --videos 0 --dynamic 20 \
	    --frames 12 --size 768x768 --cameras train --seed 9 --bayer-sampled
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s15 --resume auto \
	    --init $(pretrain_dir)/clstm_s14 --set train.epochs=20 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=1e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True data.val_dynamic=7 \
	    data.dynamic_repeat=2 model.noise_input=True \
	    data.extra_static=$(pretrain_dir)/bright_train,$(pretrain_dir)/bayer_train \
	    data.extra_dynamic=$(pretrain_dir)/bright_dyn,$(pretrain_dir)/bayer_dyn $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s15 --out $(pretrain_dir)/stage15.safetensors \
	    --set model.residual_rule=$(residual_rule) model.residual_cap=$(residual_cap) \
	    model.residual_cap_block=$(residual_cap_block)
	@echo "stage 16: the states follow the camera (model.align=camera: one affine map per frame, no new weights)"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/clstm_s16 --resume auto \
	    --init $(pretrain_dir)/stage15.safetensors --set train.epochs=20 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=1e-4 data.frames=12 train.filter_weight=1.0 data.train_dynamic=True data.val_dynamic=7 \
	    data.dynamic_repeat=2 model.noise_input=True model.align=camera \
	    model.residual_rule=0 model.residual_cap=0 model.residual_cap_block=0 \
	    data.extra_static=$(pretrain_dir)/bright_train,$(pretrain_dir)/bayer_train \
	    data.extra_dynamic=$(pretrain_dir)/bright_dyn,$(pretrain_dir)/bayer_dyn $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s16 --out $(pretrain_dir)/stage16.safetensors \
	    --set model.residual_rule=$(residual_rule) model.residual_cap=$(residual_cap) \
	    model.residual_cap_block=$(residual_cap_block) model.align_to=$(align_to) model.align_rating=$(align_rating) \
	    model.output_smoothing=$(output_smoothing)
	@echo "stage 20: 24-frame clips, half the steps on their first 12 frames (data.short_frames, data.short_share)"
	$(BATMAN) synth --out $(pretrain_dir)/train24 --images $(photos) --exclude $(HELDOUT) --videos 120 --dynamic 40 \
	    --frames 24 --size 768x768 --cameras train --seed 11
	$(BATMAN) synth --out $(pretrain_dir)/bright24 --images $(photos) --exclude $(HELDOUT) --videos 40 --dynamic 20 \
	    --frames 24 --size 768x768 --cameras train --seed 12 --ratio 5 50
	$(BATMAN) synth --out $(pretrain_dir)/bayer24 --images $(photos) --exclude $(HELDOUT) --videos 40 --dynamic 20 \
	    --frames 24 --size 768x768 --cameras train --seed 14 --bayer-sampled
	$(BATMAN) train --root $(pretrain_dir)/train24 --preset pretrain --out $(pretrain_dir)/clstm_s20 --resume auto \
	    --init $(pretrain_dir)/stage16.safetensors --set train.epochs=20 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=1e-4 data.frames=24 data.short_frames=12 data.short_share=0.5 train.filter_weight=1.0 \
	    data.train_dynamic=True data.val_dynamic=7 data.dynamic_repeat=2 model.noise_input=True model.align=camera \
	    model.residual_rule=0 model.residual_cap=0 model.residual_cap_block=0 model.align_to=frame \
	    model.align_rating=bicubic model.output_smoothing=0 \
	    data.extra_static=$(pretrain_dir)/bright24,$(pretrain_dir)/bayer24 \
	    data.extra_dynamic=$(pretrain_dir)/bright24,$(pretrain_dir)/bayer24 $(SET)
	$(BATMAN) release $(pretrain_dir)/clstm_s20 --out $(pretrain_dir)/stage20.safetensors \
	    --blend $(pretrain_dir)/stage16.safetensors --blend-weight $(blend_weight) --set model.residual_rule=$(residual_rule) model.residual_cap=$(residual_cap) \
	    model.residual_cap_block=$(residual_cap_block) model.align_to=$(align_to) model.align_rating=$(align_rating) \
	    model.output_smoothing=$(output_smoothing) data.exposure_level=$(exposure_level) model.residual_cap_mean=$(residual_cap_mean) \
	    model.smoothing_ramp=$(smoothing_ramp)
	@echo "stage 21: the loss is the figure evaluate averages (train.loss=psnr), from stage 20's release"
	$(BATMAN) train --root $(pretrain_dir)/train24 --preset pretrain --out $(pretrain_dir)/clstm_s21 --resume auto \
	    --init $(pretrain_dir)/stage20.safetensors --set train.epochs=14 train.schedule=cosine train.warmup_steps=20 \
	    train.lr=5e-5 train.loss=psnr data.frames=24 data.short_frames=12 data.short_share=0.5 train.filter_weight=1.0 \
	    data.train_dynamic=True data.val_dynamic=7 data.dynamic_repeat=2 model.noise_input=True model.align=camera \
	    model.residual_rule=0 model.residual_cap=0 model.residual_cap_block=0 model.align_to=frame \
	    model.align_rating=bicubic model.output_smoothing=0 data.exposure_level=$(exposure_level) \
	    data.extra_static=$(pretrain_dir)/bright24,$(pretrain_dir)/bayer24 \
	    data.extra_dynamic=$(pretrain_dir)/bright24,$(pretrain_dir)/bayer24 $(SET)
	$(MAKE) --no-print-directory unet
	@echo "the release: stage 21 averaged with stage 20, the U-Net as its single-frame path, int8 (30 MB at most)"
	$(BATMAN) release $(pretrain_dir)/clstm_s21 --out trained_model/batman_default.safetensors \
	    --blend $(pretrain_dir)/stage20.safetensors --blend-weight $(blend_weight) \
	    --single-frame $(pretrain_dir)/unet_s2.safetensors --int8 --set model.residual_rule=$(residual_rule) model.residual_cap=$(residual_cap) \
	    model.residual_cap_block=$(residual_cap_block) model.align_to=$(align_to) model.align_rating=$(align_rating) \
	    model.output_smoothing=$(output_smoothing) data.exposure_level=$(exposure_level) model.residual_cap_mean=$(residual_cap_mean) \
	    model.smoothing_ramp=$(smoothing_ramp) model.single_frame_gate=$(single_frame_gate) \
	    model.single_frame_input=$(single_frame_input)
	$(MAKE) --no-print-directory unet_baseline
	@if [ -d $(fixtures) ]; then $(MAKE) --no-print-directory eval_raws; \
	else echo "$(fixtures) not found: the held-out sets made from real raws are skipped (make eval_raws fixtures=DIR)"; fi

unet: install  ## train the same-budget U-Net, then the single-frame path fine-tuned from it (resumable; after pretrain's stages)
	@echo "the U-Net with the recurrent model's budget: $(unet_minutes) min of training on one cosine schedule"
	$(BATMAN) train --root $(pretrain_dir)/train_data --preset pretrain --out $(pretrain_dir)/unet_budget --resume auto \
	    --set model.name=unet train.max_minutes=$(unet_minutes) train.epochs=$(unet_epochs) train.schedule=cosine \
	    train.warmup_steps=50 train.lr=5e-4 train.grad_clip=1.0 data.train_dynamic=True data.val_dynamic=7 \
	    train.amp=$(unet_amp) $(SET)
	$(BATMAN) release $(pretrain_dir)/unet_budget --out $(pretrain_dir)/unet.safetensors
	@echo "the single-frame path: that U-Net fine-tuned on the recurrent model's later data (24-frame sets, brighter and Bayer-sampled videos)"
	$(BATMAN) train --root $(pretrain_dir)/train24 --preset pretrain --out $(pretrain_dir)/unet_s2 --resume auto \
	    --init $(pretrain_dir)/unet.safetensors --set model.name=unet train.epochs=60 train.schedule=cosine \
	    train.warmup_steps=20 train.lr=1e-4 train.grad_clip=1.0 data.train_dynamic=True data.val_dynamic=7 train.amp=bf16 \
	    data.frames=6 data.extra_static=$(pretrain_dir)/bright24,$(pretrain_dir)/bayer24 \
	    data.extra_dynamic=$(pretrain_dir)/bright24,$(pretrain_dir)/bayer24 $(SET)
	$(BATMAN) release $(pretrain_dir)/unet_s2 --out $(pretrain_dir)/unet_s2.safetensors

unet_baseline: unet  ## the U-Net alone beside the shipped weights (which hold it) on every held-out set (after pretrain)
	pretrain_dir=$(pretrain_dir) photos=$(photos) PYTHON=$(VENV)/bin/python \
	    scripts/compare_heldout.sh $(pretrain_dir)/unet.safetensors $(pretrain_dir)/unet_heldout
	for split in test dynamic; do \
	  $(BATMAN) evaluate --root $(pretrain_dir)/heldout --split $$split --frames 16 --out $(pretrain_dir)/classical_$$split \
	      --model trained_model/batman_default.safetensors --compare $(pretrain_dir)/unet.safetensors \
	      --baselines traditional mean bm3d mean-bm3d bm4d \
	      --videos $$( [ $$split = test ] && echo 0001 0003 || echo M0000 M0001 ) || exit 1; \
	done

residual_sweep: install  ## the tables that chose residual_rule, residual_cap and its block (training-side videos; after pretrain)
	for set in train_data:val train_data:dynamic bright_train:train bright_train:val bright_train:test; do \
	  echo "== $$set"; \
	  $(VENV)/bin/python scripts/residual_weight.py --model trained_model/batman_default.safetensors --frames 12 \
	      --root $(pretrain_dir)/$${set%:*} --split $${set#*:} $$( [ $${set#*:} = dynamic ] && echo --videos 10 ) \
	      --rule-c 0.03 0.04 0.05 0.06 0.07 0.08 0.1 0.12 0.15 --caps 0 1 1.25 1.5 1.75 2 \
	      --cap-blocks 0 2 4 8 16 --cap-rule $(residual_rule) || exit 1; \
	done

eval_raws: install  ## evaluate the default weights on held-out videos made from real raws (fixtures=DIR; after pretrain)
	@for f in $(RAW_SOURCES); do [ -f $(fixtures)/$$f ] || { echo "no $$f in $(fixtures): pass fixtures=DIR"; exit 1; }; done
	mkdir -p $(pretrain_dir)/raws && for f in $(RAW_SOURCES); do ln -sf $(abspath $(fixtures))/$$f $(pretrain_dir)/raws/; done
	$(BATMAN) synth --out $(pretrain_dir)/heldout_raw --images $(pretrain_dir)/raws --videos 12 --dynamic 6 \
	    --frames 16 --size 768x768 --seed 19 --test-only
	$(BATMAN) synth --out $(pretrain_dir)/heldout_raw_camera --images $(pretrain_dir)/raws --videos 0 --dynamic 9 \
	    --motion pan,rotate,zoom --frames 16 --size 768x768 --seed 23 --test-only
	for set in heldout_raw:test heldout_raw:dynamic heldout_raw_camera:dynamic; do \
	  $(BATMAN) evaluate --root $(pretrain_dir)/$${set%:*} --split $${set#*:} --frames 16 \
	      --out $(pretrain_dir)/eval_$${set%:*}_$${set#*:} --model trained_model/batman_default.safetensors \
	      --compare $(pretrain_dir)/stage6.safetensors $(pretrain_dir)/unet.safetensors || exit 1; \
	done

clean:  ## remove caches (keeps .venv, checkpoints and results)
	rm -rf .pytest_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

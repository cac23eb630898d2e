"""The class-aware in-painting GAN.

  configs/synthesis.py          the paper-scale model (GPU/TPU; hours on a CPU)
  configs/synthesis.py:demo     learns visible in-painting on the phantom in ~5-8 min on 2 cores
  configs/synthesis.py:smoke    a few seconds a step, for tests

The text after ':' follows configs/common.py's grammar (a variant name; no options yet).
"""
import ml_collections

from configs.common import parse_arg

VARIANTS = ("paper", "demo", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = parse_arg(arg, VARIANTS).variant
  c = ml_collections.ConfigDict()
  c.task = "synthesis"
  c.variant = variant
  c.seed = 0
  c.num_devices = 0            # 0: all devices
  c.on_nonfinite = "stop"      # a NaN/Inf loss: "stop" (keep the last checkpoint) or "skip"
  c.max_nonfinite_skips = 10   # "skip": stop after more than this many skipped optimiser
                               # updates in a row (the GAN's critic makes n_critic a step)

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ""         # "": the built-in phantom shards (built on first use)
  c.data.split = "train"
  c.data.crop_pad = (1, 2, 2)  # random crop with padding, voxels (D, H, W)
  c.data.flip = True
  c.data.scale = 0.0
  c.data.crop = (0, 0, 0)      # train on this centre crop (D, H, W) of the patch; 0: all of it
  c.data.oversample = ()       # (class, from_mm, times): training nodules of that class and at
                               # least that diameter seen `times` times an epoch; (): none

  c.model = ml_collections.ConfigDict()
  c.model.width = 32
  c.model.depth = 2
  c.model.dilations = (1, 2, 4, 8)
  c.model.attention = True
  c.model.size_conditioning = False   # a diameter channel: ask for "malignant, 14 mm"
  c.model.ratings = ""                # rating channels (nodule_jax.nodule_ratings), comma-
                                      # separated: "texture,calcification"; requests draw
                                      # them by class and size
  c.model.critic_widths = (32, 64, 128, 128)
  c.model.local_box = (32, 48, 48)    # D_local's crop around the hole (voxels: 64×48×48 mm)
  c.model.dtype = "float32"           # "bfloat16" on accelerators
  c.model.upsample = "subpixel"       # or "transpose": 3× fewer FLOPs, for GPUs / TPUs
                                      # (XLA CPU runs transposed convs slowly)

  c.mask = ml_collections.ConfigDict()
  c.mask.margin_mm = 3.0       # the hole covers the consensus mask grown by this
  c.mask.jitter = 0.1          # sphere radius (diameter/2 + margin)·U[1, 1 + jitter]
  c.mask.shift_mm = 1.0        # sphere centre: the nodule's centroid ± U[-shift, shift] per axis
  c.mask.oversized = 0.0       # share of the samples asked for their own class whose hole is
                               # drawn for another batch nodule's size when larger (the size
                               # channel still says their own; L1 holds the lung around them)
  c.mask.max_diameter_mm = 32.0  # larger nodules are left out of GAN training (their holes
                                 # would not fit local_box; checked at start)

  c.loss = ml_collections.ConfigDict()
  c.loss.lambda_global = 1.0    # λ1 in L_recon = L_masked + λ1·L_global
  c.loss.lambda_recon = 1000.0  # DeepFill's ratio of L1 to adversarial weight (1.2 : 0.001)
  c.loss.lambda_gp = 10.0
  c.loss.lambda_cls_d = 1.0
  c.loss.lambda_cls_g = 10.0
  c.loss.cls_start_step = 0     # the generator's L_cls from this step (the critic's aux head
  c.loss.cls_ramp_steps = 5000  # learns from step 0), ramped in linearly over these steps
  c.loss.counterfactual = (0.5, 0.5)  # share of (benign, malignant) samples asked for the
                                # other class (no L1 inside their hole: only the critics and
                                # the intensity terms say what it looks like)
  c.loss.counterfactual_diameter = "covering"  # their size: drawn from the requested
                                # class's training diameters but at least their own nodule's
                                # (the request sizes its hole; measured, README stop 29), from
                                # the class's alone ("class"), or their own ("same")
  c.loss.counterfactual_own_size = 0.0  # a share of them at their own nodule's size instead
  c.loss.lambda_hole_moments = 1000.0  # per class, the fakes' mean hole HU and shares above
                                       # -400 / -100 HU matched to the batch's real ones
  c.loss.lambda_hole_histogram = 0.0  # samples asked for their own class: the hole's
                                      # intensity histogram against the real one (1D W1)
  c.loss.histogram_counterfactual = True  # and the others (their size sizing the hole):
                                          # against training nodules of their class and size
  c.loss.histogram_core_weight = 0.0  # L_hist: each hole's densest fifth counts 1 + this
                                      # times (a nodule's solid core)
  c.loss.lambda_roughness = 300.0  # each hole no rougher (finest-scale energy) than the
                                  # batch's real nodules: against stripes
  c.loss.size_target_other_class = 0.0  # the size-matched targets (L_hist's, L_size's):
                                  # each nodule of the other class counts this much
  c.loss.lambda_hole_sized = 0.0  # each request: its hole statistics against those of
                                  # training nodules of its class and size
  c.loss.lambda_mode_seeking = 0.0  # MSGAN's L_ms: one request, two noises, the two
                                    # in-paintings pushed apart (a second generator pass)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.schedule = "constant"  # after a linear warm-up of warmup_steps
  c.optim.lr = 1e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.9
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0       # 0: off
  c.optim.lr_scaling = "none"   # or "linear" / "sqrt" in the effective batch / base_batch_size
  c.optim.base_batch_size = 8   # the batch optim.lr was chosen for
  c.optim.accumulate = 1        # gradient accumulation: batches per update (optax.MultiSteps)

  c.ema_decay = 0.999           # synthesis uses this moving average of the generator's
                                # weights (0: the last step's weights)
  c.batch_size = 8
  c.n_critic = 5
  c.num_steps = 100_000
  c.log_every = 50
  c.image_every = 1000
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.figure_samples = 4          # per class in the final PNG

  if variant == "demo":
    c.data.crop = (16, 40, 40)  # 32×40×40 mm around the nodule: 5× fewer voxels
    c.model.width = 16
    c.model.depth = 1
    c.model.dilations = (1, 2, 4)
    c.model.size_conditioning = True
    c.model.critic_widths = (16, 32, 64)
    c.model.local_box = (16, 32, 32)
    c.mask.margin_mm = 2.0
    c.mask.jitter = 0.05
    c.mask.shift_mm = 0.5
    c.mask.max_diameter_mm = 22.0
    c.mask.oversized = 0.75       # measured (README stop 38): 27 of 40 targets over seeds 0-3
                                  # against 26; the benign rank met at all four (none without)
    c.data.oversample = (0, 12.0, 4)  # measured (README stop 30): the 8 large benign training
                                  # nodules 4× an epoch; malignant faithfulness met on 4 seeds of 4;
                                  # on 90 scans (17 of them, stop 43) 27 of 30 targets over seeds
                                  # 0-2 against 24 (none, 2×) and 19 (8×)
    c.batch_size = 4
    c.n_critic = 2                # measured (README): with 1 the critic is too weak to make the
                                  # holes as dense as real nodules (benign 9.5% of voxels above
                                  # -400 HU against 12.8% real); with 2 they are (15%)
    c.num_steps = 600             # measured (README stop 42): 900 / 1200 steps fade the label
                                  # swap (25 / 23 of 30 targets over seeds 0-2 against 27)
    c.ema_decay = 0.99            # measured (README): over seeds 0-3, no malignant saturation
                                  # and 6-7 targets at every seed (the last weights: 4-8)
    c.loss.cls_ramp_steps = 100
    c.loss.lambda_cls_g = 0.3     # measured (README): with the stronger critic, 1-3 saturate
    c.loss.lambda_recon = 600.0   # measured (README stop 45): 52 of 60 targets over seeds 0-5
                                  # against 49 at 300; 1000 saturated the malignant requests
    c.loss.lambda_hole_histogram = 300.0  # measured (README): 6 of 10 targets against 5
    c.loss.size_target_other_class = 0.5  # measured (README stop 34): 32 of 40 targets over
                                  # seeds 0-3 against 29; denser large benign requests
    c.loss.histogram_core_weight = 2.0  # measured (README stop 40), with the oversized
                                  # holes: 30 of 40 targets over seeds 0-3 against 27 (β 1: 27)
    c.loss.counterfactual_own_size = 0.25  # measured (README stop 41): the label swap met on
                                  # 5 of seeds 0-5 against 2 (42 of 60 targets against 37)
    c.optim.lr = 1e-3
    c.log_every = 20
    c.image_every = 100
    c.checkpoint_every = 100
  elif variant == "smoke":
    c.model.width = 4
    c.model.dilations = (1, 2)
    c.model.critic_widths = (8, 8, 8, 8)
    c.batch_size = 8
    c.n_critic = 2
    c.num_steps = 4
    c.loss.cls_start_step = 2
    c.loss.cls_ramp_steps = 1
    c.log_every = 1
    c.image_every = 2
    c.checkpoint_every = 2
    c.figure_samples = 2
  return c

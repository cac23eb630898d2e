"""The main job, end to end on the built-in phantom (or `--lidc_dir`):

  data        phantom DICOM -> shards -> Table 1 + a figure of patches
  gan         the in-painting GAN, configs/synthesis.py:demo (~5-8 min on 2 cores)
  synthesize  2 synthetic malignant patches per real one -> synthetic shards
  classify    the Table 2 grid, configs/table2.py:demo -> table2.md
  evaluate    is the GAN class-aware? judged by an ensemble of three raw `small` runs (real
              patches only, seeds 0-2, each chosen by validation AUC; workdir/judge/)
  figures     the paper's Figures 2 and 3, each panel labelled with the judge's probability

  python -m experiments.demo [--workdir workdir/demo]
                             [--stages data,gan,synthesize,classify,evaluate,figures]

Every stage reuses what an earlier run finished, so a re-run (or a killed run) goes on;
a workdir keeps to the shards it was made from (a run on others is refused).
At the end, summary.md: one line per artefact, and the time taken (in all and per stage).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
from experiments import cli  # noqa: E402


ROOT = pathlib.Path(__file__).resolve().parent.parent
JUDGE_ARCH = "small"                         # raw runs of this arch judge the GAN
JUDGE_SEEDS = (0, 1, 2)                      # an ensemble: one run's verdict is a draw
EVALUATION_SPLITS = ("validation", "test")   # the phantom's are small: both as backgrounds


def _banner(text: str) -> None:
  print(f"\n==== {text} ====", flush=True)


@contextlib.contextmanager
def _stage(minutes: dict[str, float], name: str, what: str):
  """Announces stage `name` and adds the minutes it takes to `minutes[name]`."""
  _banner(f"{name}: {what}")
  start = time.time()
  yield
  minutes[name] = minutes.get(name, 0.0) + (time.time() - start) / 60


def data_stage(workdir: pathlib.Path) -> str:
  import tensorflow_datasets as tfds

  from data_prep.build import build
  from data_prep.figures import patch_gallery
  from data_prep.selection import format_table1
  from data_prep.tfds_builder import shard_dir
  from nodule_jax import atomic
  FLAGS = flags.FLAGS
  if FLAGS.lidc_dir:
    if not FLAGS.data_dir:
      raise app.UsageError("--lidc_dir needs --data_dir")
    if not (shard_dir(FLAGS.data_dir) / "dataset_info.json").exists():
      build(FLAGS.lidc_dir, FLAGS.data_dir)
    data_dir = FLAGS.data_dir
  else:
    data_dir = cli.data_dir_or_phantom(None, FLAGS.phantom_scans)
  check_same_data(workdir, data_dir)   # before anything is written into workdir
  builder = tfds.builder_from_directory(str(shard_dir(data_dir)))
  pairs, train = [], []
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      pairs.append((split, int(ex["label"])))
      if split == "train":
        train.append(ex)
  table = format_table1(pairs, f"Table 1 of the shards in {data_dir}")
  print(table)
  atomic.write_text(workdir / "table1.md", table + "\n")
  patch_gallery(train, str(workdir / "patches.png"))
  print(f"wrote {workdir / 'table1.md'} and {workdir / 'patches.png'}")
  return data_dir


DATA_RECORD = "data_dir.txt"   # the shards this workdir's stages were made from


def check_same_data(workdir: pathlib.Path, data_dir: str) -> None:
  """Records `data_dir` in workdir/DATA_RECORD on the first run; a later run on other shards
  (another `--phantom_scans` or `--data_dir`, or a new default phantom) is refused, since it
  would reuse stages made from the first (a GAN, classifiers) and judge them on the second.
  A workdir from before the record names its data by its GAN's config."""
  from nodule_jax import atomic
  from nodule_jax.inpaint import gan_data_dir
  record = workdir / DATA_RECORD
  made_from = (record.read_text().strip() if record.exists()
               else gan_data_dir(workdir / "gan") or str(data_dir))
  if made_from != str(data_dir):
    raise app.UsageError(f"{workdir} was made from {made_from}, and this run reads {data_dir}: "
                         "its finished stages would be reused on other data. Give another "
                         "--workdir, or remove this one.")
  if not record.exists():
    atomic.write_text(record, f"{data_dir}\n")


def gan_config(data_dir: str):
  from configs.synthesis import get_config
  config = get_config("demo")
  config.data.data_dir = data_dir
  return config


def main(argv):
  del argv
  cli.quiet_logs()
  start = time.time()
  workdir = pathlib.Path(flags.FLAGS.workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  stages, minutes = flags.FLAGS.stages, {}
  with _stage(minutes, "data", "shards and Table 1"):
    data_dir = data_stage(workdir)
  if "gan" in stages:
    with _stage(minutes, "gan", "configs/synthesis.py:demo"):
      from experiments.train import train
      train(gan_config(data_dir), workdir / "gan")
  syn_dir = workdir / "synthetic"
  if "synthesize" in stages and not (syn_dir / "synthesis.json").exists():
    with _stage(minutes, "synthesize", "malignant nodules in-painted into real malignant "
                "backgrounds"):
      from experiments.synthesize import run
      run(workdir / "gan", data_dir, syn_dir)
  if "classify" in stages:
    with _stage(minutes, "classify", "the Table 2 grid, configs/table2.py:demo"):
      grid = workdir / "table2"
      cmd = [sys.executable, "-m", "experiments.sweep", "--config",
             str(ROOT / "configs" / "table2.py:demo"), "--workdir", str(grid),
             f"--config.data_dir={data_dir}", f"--config.synthetic_dirs=('{syn_dir}',)",
             "--config.processes=2"]
      subprocess.run(cmd, check=True, cwd=ROOT)
      subprocess.run([sys.executable, "-m", "experiments.table2", "--workdir", str(grid)],
                     check=True, cwd=ROOT)
  if "evaluate" in stages or "figures" in stages:
    with _stage(minutes, "judge", f"{len(JUDGE_SEEDS)} raw {JUDGE_ARCH} classifiers, chosen "
                "by validation AUC"):
      judge = judge_runs(workdir, data_dir)
  if "evaluate" in stages:
    with _stage(minutes, "evaluate", "label swap, faithfulness, realism"):
      from experiments.evaluate_synthesis import run as evaluate
      evaluate(workdir / "gan", judge, data_dir, workdir / "evaluation",
               splits=EVALUATION_SPLITS)
  if "figures" in stages:
    with _stage(minutes, "figures", "the paper's Figures 2 and 3"):
      from experiments.figures import run as figures
      figures(workdir / "gan", data_dir, workdir / "figures", judge)
  summary = closing_summary(workdir, time.time() - start, minutes)
  _banner(f"done in {(time.time() - start) / 60:.1f} min: {workdir / 'summary.md'}")
  print(summary)


def judge_runs(workdir: pathlib.Path, data_dir: str) -> list[pathlib.Path]:
  """The judge's classifier runs (trained here if not yet, in workdir/judge/): the grid's
  raw `JUDGE_ARCH` config at each of `JUDGE_SEEDS`, each run's checkpoint chosen by
  validation AUC (the grid's own runs choose by log-loss)."""
  from experiments.sweep import run_dir
  cmd = [sys.executable, "-m", "experiments.sweep", "--config",
         str(ROOT / "configs" / "table2.py:demo"), "--workdir", str(workdir / "judge"),
         f"--config.data_dir={data_dir}", "--config.strategies=('raw',)",
         f"--config.archs=('{JUDGE_ARCH}',)", f"--config.seeds={JUDGE_SEEDS!r}",
         "--config.overrides=('--config.select_by=auc',)", "--config.processes=2"]
  subprocess.run(cmd, check=True, cwd=ROOT)
  return [run_dir(workdir / "judge", "raw", JUDGE_ARCH, s) for s in JUDGE_SEEDS]


ARTEFACTS = (
    ("table1.md", "Table 1: the phantom's patches per split and class"),
    ("patches.png", "real patches, benign and malignant, with their consensus masks"),
    ("gan/checkpoints", "the GAN's checkpoints (TensorBoard logs beside them)"),
    ("synthetic/synthesis.json", "the synthetic set: counts and Table 1's Train+Syn line"),
    ("synthetic/synthetic.png", "synthetic malignant patches (red: the in-painted region)"),
    ("table2/table2.md", "Table 2: raw / weighted / synthesis, test metrics with 95% CIs"),
    ("table2/table2_roc.png", "Table 2's ROC curves"),
    ("judge", "the evaluation's judge: three raw classifier runs, an ensemble"),
    ("evaluation/synthesis_evaluation.json", "is the GAN class-aware? the numbers and targets"),
    ("evaluation/synthesis_evaluation.png", "the evaluation at a glance"),
    ("figures/figure2_classes.png", "Fig. 2: the same backgrounds in-painted as either class"),
    ("figures/figure3_noise_and_size.png", "Fig. 3: noise draws × requested diameters"),
)


def closing_summary(workdir: pathlib.Path, seconds: float,
                    minutes: dict[str, float] | None = None) -> str:
  """Writes workdir/summary.md (one line per artefact made, the time taken in all and per
  stage: `minutes`, stage name -> minutes); returns it."""
  from nodule_jax import atomic
  lines = [f"- `{path}`: {what}" for path, what in ARTEFACTS if (workdir / path).exists()]
  took = f"Demo finished in {seconds / 60:.1f} min (this run)"
  if minutes:
    took += ": " + ", ".join(f"{name} {m:.1f}" for name, m in minutes.items())
  text = "\n".join([took + ".", *lines])
  atomic.write_text(workdir / "summary.md", text + "\n")
  return text


def define_flags() -> None:
  """The flags of this entry point (defined when it runs, so that others can import it)."""
  flags.DEFINE_string("workdir", "workdir/demo", "Where everything the demo makes goes.")
  flags.DEFINE_list("stages", ["data", "gan", "synthesize", "classify", "evaluate", "figures"],
                    "Stages to run.")
  flags.DEFINE_string("lidc_dir", None, "LIDC-IDRI root (default: the built-in phantom).")
  flags.DEFINE_string("data_dir", None, "Shard folder for --lidc_dir.")
  flags.DEFINE_integer("phantom_scans", None, "Scans in the built-in phantom (default "
                       "data_prep.phantom.DEFAULT_SCANS); another count is its own cached set.",
                       lower_bound=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)

"""What the entry points share: `app.run` with one-line errors for unknown `--config.x` keys,
and the default data ("no data folder given -> the built-in phantom")."""
import contextlib
import sys

from absl import app


def _parse(argv: list[str]) -> list[str]:
  try:
    rest = app.parse_flags_with_usage(argv)  # exits on the errors absl knows
    _check_tuple_overrides()
    return rest
  except (AttributeError, KeyError) as e:     # what ConfigDict raises for a missing field
    while isinstance(e, BaseException) and e.args:  # AttributeError(KeyError("'x'\nDid you.."))
      e = e.args[0]
    field, _, hint = str(e).partition("\n")
    field = field.strip("'\"")
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
           and field in a.split("=")[0].split(".")]
    hint = f" ({hint})" if hint else ""
    sys.stderr.write(f"FATAL Flags parsing error: unknown config key "
                     f"{bad[0] if bad else field}{hint}\n")
    sys.exit(1)


def _check_tuple_overrides() -> None:
  """absl checks a scalar override's type; ml_collections takes any tuple for a tuple field
  (`--config.model.dilations=x` gives ('x',)). Elements of another type than the config
  file's default elements are a usage error here, before anything starts."""
  import runpy

  from absl import flags
  from ml_collections import config_flags
  if "config" not in flags.FLAGS or not flags.FLAGS["config"].present:
    return
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
  default = runpy.run_path(path)["get_config"](arg or None)
  for key, value in overrides.items():
    old = default
    for part in key.split("."):
      old = old[part]
    kinds = {type(x) for x in old} if isinstance(old, tuple) else ()
    if kinds and not all(type(x) in kinds or (float in kinds and type(x) is int) for x in value):
      sys.stderr.write(f"FATAL Flags parsing error: --config.{key}={value!r}: expected a tuple "
                       f"of {' or '.join(sorted(k.__name__ for k in kinds))} like {old!r}\n")
      sys.exit(1)


def run(main) -> None:
  app.run(main, flags_parser=_parse)


def data_dir_or_phantom(data_dir: str | None, phantom_scans: int | None = None) -> str:
  """`data_dir`, or (when empty) the built-in phantom's shards (of `phantom_scans` scans,
  default `phantom.DEFAULT_SCANS`), built on first use; says so."""
  if data_dir:
    return str(data_dir)
  from data_prep.default_data import phantom_data_dir
  from data_prep.phantom import DEFAULT_SCANS
  print("No data folder given: using the built-in phantom.")
  return str(phantom_data_dir(phantom_scans or DEFAULT_SCANS))


def quiet_logs() -> None:
  """absl at WARNING unless --verbosity was given (orbax and tfds log every file at INFO)."""
  from absl import flags, logging
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def gan_data_dir_or_phantom(data_dir: str, gan_workdir) -> str:
  """`data_dir`, else the shards the GAN in `gan_workdir` trained on, else the phantom's."""
  from nodule_jax.inpaint import gan_data_dir
  return data_dir_or_phantom(data_dir or gan_data_dir(gan_workdir))


@contextlib.contextmanager
def requests_as_usage_errors():
  """A request the tools cannot meet (`inpaint.RequestError`, an unusable scan, an output
  folder that is not ours) ends the command with one line, not a traceback."""
  from data_prep.volumes import ScanError
  from nodule_jax.inpaint import RequestError
  try:
    yield
  except (RequestError, ScanError, FileExistsError) as e:
    raise app.UsageError(str(e))

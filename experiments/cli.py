"""`app.run` for the entry points that take `--config`: a wrong `--config.x=y` key is a
one-line error naming the flag, not a traceback from inside ml_collections."""
import sys

from absl import app


def _parse(argv: list[str]) -> list[str]:
  try:
    return app.parse_flags_with_usage(argv)  # exits on the errors absl knows
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


def run(main) -> None:
  app.run(main, flags_parser=_parse)

"""One grammar for every config string: `configs/<name>.py:<variant>,<key>=<value>,...`.

After big_vision's `parse_arg`: the text after ':' is a comma-separated list in which a bare
word names a variant and `key=value` sets an option. Options and their defaults (which also
give their types) are declared by each config file; anything else is an error.
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _typed(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() not in _TRUE + _FALSE:
      raise ValueError(f"option {key}={value!r}: expected true or false")
    return value.lower() in _TRUE
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"option {key}={value!r}: expected a {type(default).__name__}") from None


def parse_arg(arg: str | None, variants: Sequence[str], **options) -> ml_collections.ConfigDict:
  """'demo,arch=resnet-50' -> ConfigDict(variant='demo', arch='resnet-50', ...).

  variants: the allowed bare words; the first is the default. options: name -> default.
  Raises ValueError naming the unknown variant or option and what is allowed.
  """
  out = {"variant": variants[0], **options}
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if "=" in token:
      key, value = token.split("=", 1)
      if key not in options:
        allowed = ", ".join(f"{k}=..." for k in options) or "none"
        raise ValueError(f"unknown option {key!r} in {arg!r}; options: {allowed}")
      out[key] = _typed(key, value, options[key])
    elif token in variants:
      out["variant"] = token
    else:
      raise ValueError(f"unknown variant {token!r} in {arg!r}; variants: {', '.join(variants)}")
  return ml_collections.ConfigDict(out)

"""Command-line errors read like a tool's: one line on stderr and exit status 2.

A wrong path or a misspelt flag is the user's to fix, not a crash: `train.py`,
`evaluate.py`, `python -m fast_ast_jax.predict` and `python -m fast_ast_jax.distill` report a
missing config file, a misspelt `--config.` field (with ml_collections' "did you mean" hint)
and a missing or empty checkpoint as `error: ...` and exit with status 2 (as argparse does
for bad arguments), without a traceback.
"""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Iterator, NoReturn, Sequence

from absl import flags
from ml_collections import config_flags

from fast_ast_jax.checkpoints.store import CheckpointError
from fast_ast_jax.train.config import recipe

USAGE = 2  # exit status of usage errors (argparse's)


def fail(message: str) -> NoReturn:
    """Print `error: message` (one line) to stderr and exit with status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(USAGE)


def _field_error(exc: Exception, argv: Sequence[str]) -> str:
    """ml_collections' KeyError/AttributeError text -> '--config.a.b: no such config field;
    did you mean "c"?' naming the flag as typed."""
    text = str(exc).encode().decode("unicode_escape")
    name = re.match(r"""['"]*([\w-]+)""", text)
    name = name.group(1) if name else text.splitlines()[0]
    typed = [a.split("=")[0] for a in argv if a.startswith("--config.")
             and a.split("=")[0].endswith(f".{name}")]
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return (f"{typed[0] if typed else name}: no such config field"
            + (f'; did you mean "{hint.group(1)}"?' if hint else ""))


def parse_flags(argv: Sequence[str], *, config_flag: str = "config") -> list[str]:
    """absl flags parser for app.run(main, flags_parser=parse_flags) of scripts with a
    config_flags config file: usage errors of the config file and its fields -> fail()."""
    try:
        rest = flags.FLAGS(argv)
    except (KeyError, AttributeError) as e:  # --config.<misspelt field>=...
        fail(_field_error(e, argv))
    except flags.Error as e:  # absl's own: unknown flag, bad value, missing required flag
        fail(str(e))
    if config_flag in flags.FLAGS and flags.FLAGS[config_flag].present:
        path = config_flags.get_config_filename(flags.FLAGS[config_flag])
        if not Path(path.split(":")[0]).is_file():
            fail(f"config file {path.split(':')[0]} does not exist")
        try:
            flags.FLAGS[config_flag].value  # noqa: B018  (loads the file: errors surface here)
        except (KeyError, AttributeError) as e:
            fail(_field_error(e, argv))
    return rest


def config_file(spec: str):
    """FILE[:ARG] -> get_config(ARG) of that config file (argparse front ends); a missing
    file -> fail()."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        fail(f"config file {path} does not exist")
    return recipe(path, arg or None)


@contextlib.contextmanager
def path_errors() -> Iterator[None]:
    """A missing path (checkpoint, data) or an unreadable checkpoint -> fail()."""
    try:
        yield
    except (FileNotFoundError, CheckpointError) as e:
        fail(str(e))

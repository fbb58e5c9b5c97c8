"""What each ``parley`` subcommand does, grouped by what it works on; :mod:`parley.cli` parses the
command line and calls them. Each takes the parsed arguments and a console and returns an exit
status. Nothing below the CLI imports this package.
"""

from parley.commands.call import run_call
from parley.commands.keys import run_keys
from parley.commands.models import run_models
from parley.commands.options import EXIT_ERROR, EXIT_USAGE, settings_from
from parley.commands.prompts import run_prompts
from parley.commands.server import run_serve
from parley.commands.speech import run_say, run_transcribe, run_voices

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "run_call",
    "run_keys",
    "run_models",
    "run_prompts",
    "run_say",
    "run_serve",
    "run_transcribe",
    "run_voices",
    "settings_from",
]

"""The one exception type the package raises for bad input or config.

Its message is a single sentence naming the file, row, column or key at fault and
what to do; entry points print it without a traceback and exit non-zero.
"""


class InputError(Exception):
    """Bad input data, config or model folder; the message is meant for the user."""

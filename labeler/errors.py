"""The errors a user can fix: bad input, configuration or data.

Every domain error of labeler subclasses InputError; the CLI prints one and exits 2. A ValueError that is not an
InputError is a programming error and reaches the user as a traceback.
"""


class InputError(ValueError):
    """Input, configuration or data the user can fix; the CLI prints it and exits 2."""


class ConfigError(InputError):
    """A config is wrong; the message names the key and says what it accepts."""


class FeatureError(InputError):
    """One feature's examples cannot be labelled (e.g. a text the discriminator cannot take); labelling records that
    feature as failed and goes on with the others."""

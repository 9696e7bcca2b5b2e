"""Errors a user can cause and fix: the CLI prints them as one line and exits 1, never a traceback."""


class UserError(Exception):
    """Base of every mistake the user can fix (bad path, bad image, unknown model, no GPU...)."""


class ConfigError(UserError, ValueError):
    """A config value or key is wrong; the message says which and why."""


class DataError(UserError, ValueError):
    """The data cannot make the protocol's splits; the message says what is wrong and where."""


class WeightsError(UserError, RuntimeError):
    """Pretrained weights were asked for and cannot be had; the message names the ways out."""


class DeviceError(UserError, RuntimeError):
    """The device asked for is not there."""


class TrackingError(UserError, RuntimeError):
    """A tracking or registry operation cannot be done (bad run id, no such model...)."""

"""selfres: self-supervised resolution restoration of 3-D fluorescence stacks."""

__version__ = "0.1.0"

"""kdumpkit: Linux kernel crash dumping, the whole chain, in Python."""

__version__ = "0.1.0"

"""alignscope: align small causal LMs and measure what alignment did to their safety and helpfulness."""

__version__ = "0.1.0"

"""mnic-ops: provision and maintain hosts that run the My Name Is Claude framework."""

__version__ = "0.1.0"

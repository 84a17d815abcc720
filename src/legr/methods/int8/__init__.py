"""The ``int8`` stage: a chain's members quantized for deployment (`legr.methods.int8.stage`)."""

from legr.methods.int8.stage import INT8_CONFIG, Int8Section, Int8Stage

__all__ = ["INT8_CONFIG", "Int8Section", "Int8Stage"]

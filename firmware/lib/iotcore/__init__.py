"""The device protocol core (MicroPython and CPython); see core.py."""

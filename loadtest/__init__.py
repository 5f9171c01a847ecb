"""Capacity planning with locust: emulated devices, operators and web viewers over the real HTTP
API, load shapes, a capacity report per run and a sizing plan (``iotctl load``)."""

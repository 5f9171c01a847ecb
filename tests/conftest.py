"""Shared fixtures. Integration tests run against the stack that `iotctl up` started."""

"""Rollouts: one command to many devices in phases, at a rate, stopped when too many fail.

``rules`` holds the pure rules (states, phases, rate, abort criteria).
"""

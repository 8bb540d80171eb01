"""Scheduling jobs: admission of cpu/memory and the local (embedded) engine."""

"""A wire-compatible emulator of the CVM API 2.0, used by demos, tests and benchmarks."""

"""Triton kernels for the fused op; installed as `mixpath.kernels` (setup.py package_dir)."""

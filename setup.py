"""Installs psd_kernels and psd_train.

    pip install --no-build-isolation -e .
"""
from setuptools import find_packages, setup

setup(
    name="psd",
    version="0.1.0",
    description="Fused progressive self-distillation (PSD) contrastive loss for CLIP training",
    packages=find_packages(include=["psd_kernels", "psd_kernels.*", "psd_train", "psd_train.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy"],
)

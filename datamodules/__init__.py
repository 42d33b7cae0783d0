"""LightningDataModules for seqmodels' tasks."""

from datamodules.series import SineWaveDataModule

__all__ = ["SineWaveDataModule"]

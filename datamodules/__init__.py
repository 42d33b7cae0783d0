"""LightningDataModules for seqmodels' tasks."""

from datamodules.series import SeriesDataModule, SineWaveDataModule

__all__ = ["SeriesDataModule", "SineWaveDataModule"]

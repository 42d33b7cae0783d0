"""LightningDataModules for seqmodels' tasks."""

from datamodules.imdb import IMDBDataModule
from datamodules.series import SeriesDataModule, SineWaveDataModule

__all__ = ["IMDBDataModule", "SeriesDataModule", "SineWaveDataModule"]

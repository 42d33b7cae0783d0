"""LightningDataModules for seqmodels' tasks."""

from datamodules.chartext import CharTextDataModule
from datamodules.imdb import IMDBDataModule
from datamodules.imdb_lm import IMDBLanguageModelDataModule
from datamodules.panel import PanelDataModule
from datamodules.series import SeriesDataModule, SineWaveDataModule

__all__ = ["CharTextDataModule", "IMDBDataModule", "IMDBLanguageModelDataModule", "PanelDataModule", "SeriesDataModule", "SineWaveDataModule"]

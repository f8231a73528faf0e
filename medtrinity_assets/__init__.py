"""medtrinity-assets: the MedTrinity-25M pipeline as a Dagster asset graph."""

__version__ = "0.1.0"

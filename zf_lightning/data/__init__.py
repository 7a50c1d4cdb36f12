"""Lightning data modules; every one yields ``SequenceBatch``."""

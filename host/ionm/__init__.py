"""ionm: host software for the open IONM stack."""
__version__ = "0.1.0"

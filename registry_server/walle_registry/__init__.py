"""The Walle registry and deployment service."""

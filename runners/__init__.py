"""Runners: the only place objects are built from configuration and logging is set up."""

"""Bootstrap: the one Settings object, the stores an engine runs on, the shard map, logging
set-up."""

"""crmsync domain: events, commands, state and the rules of SPEC §1-§4. Pure: no I/O."""

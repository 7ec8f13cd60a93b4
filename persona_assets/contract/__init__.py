"""Pure rules of the persona contract, kept free of I/O so tests call them directly."""

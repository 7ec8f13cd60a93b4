"""Reading and validating the contract's import directory."""

"""cloudrec: self-hosted cloud recording."""

"""Device mesh and the logical-axis sharding rules (see docs/partitioning.md)."""
